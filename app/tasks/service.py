"""Projects and tasks in SQL. Every statement filters by the caller's user_id: a row of
another user is simply not found (None here, 404 in the API), and the composite foreign
key (user_id, project_id) → projects(user_id, id) refuses a task pointing at someone
else's project.

Each write runs in one ``db.transaction()`` with its activity-log row, its pub/sub event
and a new data version for the user (``Announcer``), so the log, the stream, the caches
and the data agree. A PATCH that would leave every value as it is writes nothing at all:
no ``updated_at``, no activity row, no event, no new version, no re-embedding.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.activity import record
from app.db import Connection, Database, Record
from app.jobs import Jobs
from app.pubsub import Broker
from app.search import request_embedding
from app.tasks.caching import DataVersions
from app.tasks.schemas import ProjectIn, ProjectOut, ProjectPatch, TaskIn, TaskOut, TaskPatch

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
# The row is locked first (FOR UPDATE waits for a concurrent writer and then reads its
# version), the wanted values are computed from it, and the UPDATE runs only when they
# differ from the current ones (IS DISTINCT FROM: NULLs compare as values). One row comes
# back while the task exists: whether it changed, and whether its text or completion did.
# $5/$7: whether project_id/due_at were sent (null then means "clear").
UPDATE_TASK = """
WITH current AS (
    SELECT id, title, body, project_id, due_at, completed_at
    FROM tasks
    WHERE user_id = $1 AND id = $2
    FOR UPDATE
),
wanted AS (
    SELECT id,
           coalesce($3::text, title) AS title,
           coalesce($4::text, body) AS body,
           CASE WHEN $5::boolean THEN $6::bigint ELSE project_id END AS project_id,
           CASE WHEN $7::boolean THEN $8::timestamptz ELSE due_at END AS due_at,
           CASE WHEN $9::boolean IS NULL THEN completed_at
                WHEN $9::boolean THEN coalesce(completed_at, now())
                ELSE NULL END AS completed_at
    FROM current
),
updated AS (
    UPDATE tasks t
    SET title = w.title, body = w.body, project_id = w.project_id, due_at = w.due_at,
        completed_at = w.completed_at, updated_at = now()
    FROM wanted w JOIN current c USING (id)
    WHERE t.id = w.id
      AND (w.title, w.body, w.project_id, w.due_at, w.completed_at)
          IS DISTINCT FROM (c.title, c.body, c.project_id, c.due_at, c.completed_at)
    RETURNING t.id
)
SELECT EXISTS (SELECT FROM updated) AS changed,
       (w.title, w.body) IS DISTINCT FROM (c.title, c.body) AS text_changed,
       w.completed_at IS DISTINCT FROM c.completed_at AS completion_changed,
       w.completed_at IS NOT NULL AS completed
FROM wanted w JOIN current c USING (id)
"""
DELETE_TASK = "DELETE FROM tasks WHERE user_id = $1 AND id = $2 RETURNING id"
OWNS_PROJECT = "SELECT EXISTS (SELECT 1 FROM projects WHERE user_id = $1 AND id = $2)"

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
# As UPDATE_TASK: lock, compare, write only a difference; the project as it now is.
UPDATE_PROJECT = """
WITH current AS (
    SELECT id, name, color, created_at FROM projects
    WHERE user_id = $1 AND id = $2
    FOR UPDATE
),
wanted AS (
    SELECT id, coalesce($3::text, name) AS name, coalesce($4::text, color) AS color, created_at
    FROM current
),
updated AS (
    UPDATE projects p SET name = w.name, color = w.color
    FROM wanted w JOIN current c USING (id)
    WHERE p.id = w.id AND (w.name, w.color) IS DISTINCT FROM (c.name, c.color)
    RETURNING p.id
)
SELECT w.id, w.name, w.color, w.created_at, EXISTS (SELECT FROM updated) AS changed
FROM wanted w
"""
DELETE_PROJECT = "DELETE FROM projects WHERE user_id = $1 AND id = $2 RETURNING id"

After = tuple[datetime, int]  # (created_at, id) of the last row of the previous page


class UnknownProject(LookupError):
    """``project_id`` names no project of the caller."""


class Announcer:
    """Tells the rest of the system about a change, in the change's own transaction: the
    activity log, the user's event stream and the user's data version."""

    def __init__(self, broker: Broker, versions: DataVersions) -> None:
        self.broker = broker
        self.versions = versions

    async def __call__(
        self,
        conn: Connection,
        user_id: int,
        event: str,
        subject: tuple[str, int],
        data: dict[str, Any] | None = None,
    ) -> None:
        data = data or {}
        await record(conn, user_id, event, subject, data)
        payload = {"type": event, "id": subject[1], **data}
        await self.broker.publish(f"user:{user_id}", payload, conn=conn)
        await self.versions.bump(conn, user_id)


# --- projects ----------------------------------------------------------------------------


async def list_projects(
    db: Database, user_id: int, *, limit: int, after: After | None
) -> list[ProjectOut]:
    """Up to ``limit`` projects, newest first, after ``after``."""
    async with db.acquire() as conn:
        if after is None:
            rows = await conn.fetch(LIST_PROJECTS.format(after=""), user_id, limit)
        else:
            sql = LIST_PROJECTS.format(after="AND (created_at, id) < ($3, $4)")
            rows = await conn.fetch(sql, user_id, limit, *after)
    return [ProjectOut(**dict(row)) for row in rows]


async def get_project(db: Database, user_id: int, project_id: int) -> ProjectOut | None:
    async with db.acquire() as conn:
        row = await conn.fetchrow(GET_PROJECT, user_id, project_id)
    return None if row is None else ProjectOut(**dict(row))


async def create_project(
    db: Database, announce: Announcer, user_id: int, new: ProjectIn
) -> ProjectOut:
    async with db.transaction() as conn:
        row = await conn.fetchrow(INSERT_PROJECT, user_id, new.name, new.color)
        assert row is not None
        await announce(conn, user_id, "project.created", ("project", row["id"]))
    return ProjectOut(**dict(row))


async def update_project(
    db: Database, announce: Announcer, user_id: int, project_id: int, patch: ProjectPatch
) -> ProjectOut | None:
    """The project after the patch; None when the caller has no such project."""
    async with db.transaction() as conn:
        row = await conn.fetchrow(UPDATE_PROJECT, user_id, project_id, patch.name, patch.color)
        if row is None:
            return None
        if row["changed"]:
            await announce(conn, user_id, "project.updated", ("project", project_id))
    return ProjectOut(
        id=row["id"], name=row["name"], color=row["color"], created_at=row["created_at"]
    )


async def delete_project(db: Database, announce: Announcer, user_id: int, project_id: int) -> bool:
    """False when the caller has no such project. Its tasks stay, detached."""
    async with db.transaction() as conn:
        if await conn.fetchval(DELETE_PROJECT, user_id, project_id) is None:
            return False
        await announce(conn, user_id, "project.deleted", ("project", project_id))
    return True


# --- tasks -------------------------------------------------------------------------------


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


async def list_tasks(
    db: Database,
    user_id: int,
    *,
    project_id: int | None,
    completed: bool | None,
    limit: int,
    after: After | None,
) -> list[TaskOut]:
    """Up to ``limit`` tasks, newest first, after ``after``, with their project."""
    sql, _ = list_tasks_sql(
        project=project_id is not None, completed=completed, after=after is not None, limit=limit
    )
    args: list[Any] = [user_id]
    if project_id is not None:
        args.append(project_id)
    if after is not None:
        args.extend(after)
    async with db.acquire() as conn:
        rows = await conn.fetch(sql, *args)
    return [task_out(row) for row in rows]


async def get_task(db: Database, user_id: int, task_id: int) -> TaskOut | None:
    async with db.acquire() as conn:
        row = await conn.fetchrow(GET_TASK, user_id, task_id)
    return None if row is None else task_out(row)


async def create_task(
    db: Database, announce: Announcer, jobs: Jobs, user_id: int, new: TaskIn
) -> TaskOut:
    """The new task; its embedding is queued in the same transaction."""
    async with db.transaction() as conn:
        await _check_project(conn, user_id, new.project_id)
        task_id = await conn.fetchval(
            INSERT_TASK, user_id, new.project_id, new.title, new.body, new.due_at
        )
        await announce(conn, user_id, "task.created", ("task", task_id))
        await request_embedding(jobs, conn, task_id)
        row = await conn.fetchrow(GET_TASK, user_id, task_id)
    assert row is not None
    return task_out(row)


async def update_task(
    db: Database, announce: Announcer, jobs: Jobs, user_id: int, task_id: int, patch: TaskPatch
) -> TaskOut | None:
    """The task after the patch; None when the caller has no such task.

    Only the fields sent count (``project_id``/``due_at`` null clear them); when no value
    differs from the current one nothing is written or announced. A new embedding is
    queued only when the title or body really changed.
    """
    sent = patch.model_fields_set
    async with db.transaction() as conn:
        await _check_project(conn, user_id, patch.project_id)
        outcome = await conn.fetchrow(
            UPDATE_TASK,
            user_id,
            task_id,
            patch.title,
            patch.body,
            "project_id" in sent,
            patch.project_id,
            "due_at" in sent,
            patch.due_at,
            patch.completed,
        )
        if outcome is None:
            return None
        if outcome["changed"]:
            event = "task.updated"
            if outcome["completion_changed"]:
                event = "task.completed" if outcome["completed"] else "task.reopened"
            await announce(conn, user_id, event, ("task", task_id))
            if outcome["text_changed"]:
                await request_embedding(jobs, conn, task_id)
        row = await conn.fetchrow(GET_TASK, user_id, task_id)
    assert row is not None
    return task_out(row)


async def delete_task(db: Database, announce: Announcer, user_id: int, task_id: int) -> bool:
    """False when the caller has no such task."""
    async with db.transaction() as conn:
        if await conn.fetchval(DELETE_TASK, user_id, task_id) is None:
            return False
        await announce(conn, user_id, "task.deleted", ("task", task_id))
    return True


def task_out(row: Record) -> TaskOut:
    return TaskOut(**dict(row), completed=row["completed_at"] is not None)


async def _check_project(conn: Connection, user_id: int, project_id: int | None) -> None:
    if project_id is not None and not await conn.fetchval(OWNS_PROJECT, user_id, project_id):
        raise UnknownProject(project_id)
