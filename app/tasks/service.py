"""Projects and tasks in SQL. Every statement filters by the caller's user_id: a row of
another user is simply not found (404), and the composite foreign key (user_id,
project_id) → projects(user_id, id) refuses a task pointing at someone else's project.

Writes go through ``db.transaction()`` together with their activity-log row and their
pub/sub event on the user's channel, so the log, the stream and the data agree.
"""

from __future__ import annotations

from typing import Any

from app.activity import record
from app.cache import Cache
from app.db import Connection, Database, Record
from app.pubsub import Broker
from app.tasks.caching import data_changed

TASK_COLUMNS = """
t.id, t.title, t.body, t.project_id, p.name AS project_name, p.color AS project_color,
t.completed_at, t.due_at, t.created_at, t.updated_at
"""
# The list: one query joins each task's project (no N+1). Filters are fixed fragments
# chosen in Python, so every variant is a plain statement the planner can use the right
# index for (tasks_user_created, or tasks_project_created with a project filter).
LIST_TASKS = """
SELECT {columns}
FROM tasks t
LEFT JOIN projects p ON p.id = t.project_id
WHERE t.user_id = $1 {filters}
ORDER BY t.created_at DESC, t.id DESC
LIMIT {limit}
"""
TASK_FILTERS = {
    "project": "AND t.project_id = ${n}",
    "done": "AND t.completed_at IS NOT NULL",
    "open": "AND t.completed_at IS NULL",
    "after": "AND (t.created_at, t.id) < (${n}, ${m})",
}
GET_TASK = f"""
SELECT {TASK_COLUMNS}
FROM tasks t LEFT JOIN projects p ON p.id = t.project_id
WHERE t.user_id = $1 AND t.id = $2
"""
INSERT_TASK = """
INSERT INTO tasks (user_id, project_id, title, body, due_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING id
"""
UPDATE_TASK = """
UPDATE tasks SET
    title        = coalesce($3::text, title),
    body         = coalesce($4::text, body),
    project_id   = CASE WHEN $5::boolean THEN $6::bigint ELSE project_id END,
    due_at       = CASE WHEN $7::boolean THEN $8::timestamptz ELSE due_at END,
    completed_at = CASE WHEN $9::boolean IS NULL THEN completed_at
                        WHEN $9::boolean THEN coalesce(completed_at, now())
                        ELSE NULL END,
    updated_at   = now()
WHERE user_id = $1 AND id = $2
RETURNING id, completed_at
"""
DELETE_TASK = "DELETE FROM tasks WHERE user_id = $1 AND id = $2 RETURNING id"
OWNS_PROJECT = "SELECT EXISTS (SELECT 1 FROM projects WHERE user_id = $1 AND id = $2)"

PROJECT_COLUMNS = "id, name, color, created_at"
LIST_PROJECTS = """
SELECT id, name, color, created_at FROM projects
WHERE user_id = $1 {after}
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
GET_PROJECT = "SELECT id, name, color, created_at FROM projects WHERE user_id = $1 AND id = $2"
INSERT_PROJECT = """
INSERT INTO projects (user_id, name, color) VALUES ($1, $2, $3)
RETURNING id, name, color, created_at
"""
UPDATE_PROJECT = """
UPDATE projects SET name = coalesce($3::text, name), color = coalesce($4::text, color)
WHERE user_id = $1 AND id = $2
RETURNING id, name, color, created_at
"""
DELETE_PROJECT = "DELETE FROM projects WHERE user_id = $1 AND id = $2 RETURNING id"


def list_tasks_sql(
    *, project: bool, completed: bool | None, after: bool, limit: int
) -> tuple[str, list[str]]:
    """The statement for one filter combination and the names of its extra parameters."""
    filters, params = [], []
    if project:
        params.append("project_id")
        filters.append(TASK_FILTERS["project"].format(n=len(params) + 1))
    if completed is not None:
        filters.append(TASK_FILTERS["done" if completed else "open"])
    if after:
        params += ["after_created_at", "after_id"]
        filters.append(TASK_FILTERS["after"].format(n=len(params), m=len(params) + 1))
    sql = LIST_TASKS.format(columns=TASK_COLUMNS, filters=" ".join(filters), limit=int(limit))
    return sql, params


async def get_task(conn: Connection, user_id: int, task_id: int) -> Record | None:
    return await conn.fetchrow(GET_TASK, user_id, task_id)


async def owns_project(conn: Connection, user_id: int, project_id: int) -> bool:
    return bool(await conn.fetchval(OWNS_PROJECT, user_id, project_id))


class Announcer:
    """Tells the rest of the system about a change: the log, the stream, the caches."""

    def __init__(self, db: Database, cache: Cache, broker: Broker) -> None:
        self.db = db
        self.cache = cache
        self.broker = broker

    async def __call__(
        self,
        conn: Connection,
        user_id: int,
        event: str,
        subject: tuple[str, int],
        data: dict[str, Any],
    ) -> None:
        """Activity row + realtime event in the caller's transaction; a new data version
        for the user's cached reads once it commits (app/tasks/caching.py)."""
        await record(conn, user_id, event, subject, data)
        payload = {"type": event, "id": subject[1], **data}
        await self.broker.publish(f"user:{user_id}", payload, conn=conn)
        await data_changed(self.db, self.cache, conn, user_id)
