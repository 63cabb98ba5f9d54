"""/api/projects and /api/tasks: CRUD owned by the caller, keyset-paginated lists.

GETs carry a weak ETag from the caller's data version and answer ``If-None-Match`` with
304 before touching the database; list pages are cached per data version
(app/tasks/caching.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from app.cache.http import cache_headers, not_modified, weak_etag
from app.db import Connection, Record
from app.deps import CurrentUser, ServicesDep
from app.pagination import InvalidCursor, read_timestamp_cursor, timestamp_cursor
from app.search import request_embedding
from app.tasks import service
from app.tasks.caching import data_version, list_key
from app.tasks.schemas import (
    ProjectIn,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
    TaskIn,
    TaskOut,
    TaskPage,
    TaskPatch,
)

router = APIRouter(tags=["tasks"])

RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=512)]


def _secret(services: ServicesDep) -> str:
    return services.settings.secret_key.get_secret_value()


def _announcer(services: ServicesDep) -> service.Announcer:
    return service.Announcer(services.db, services.cache, services.broker)


Secret = Annotated[str, Depends(_secret)]
Announce = Annotated[service.Announcer, Depends(_announcer)]


def _after(secret: str, cursor: str | None) -> tuple[Any, int] | None:
    if cursor is None:
        return None
    try:
        return read_timestamp_cursor(secret, cursor)
    except InvalidCursor:
        raise HTTPException(400, "Invalid cursor") from None


def _next_cursor(secret: str, rows: list[Record], limit: int) -> str | None:
    """Rows were fetched with LIMIT limit + 1: one more means another page follows."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return timestamp_cursor(secret, last["created_at"], last["id"])


def _task(row: Record) -> TaskOut:
    return TaskOut(**dict(row), completed=row["completed_at"] is not None)


# --- projects ----------------------------------------------------------------------------


@router.get("/api/projects", response_model=ProjectPage)
async def list_projects(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    secret: Secret,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    after = _after(secret, cursor)

    async def load() -> dict[str, Any]:
        async with services.db.acquire() as conn:
            if after is None:
                sql = service.LIST_PROJECTS.format(after="")
                rows = await conn.fetch(sql, user.id, limit + 1)
            else:
                sql = service.LIST_PROJECTS.format(after="AND (created_at, id) < ($3, $4)")
                rows = await conn.fetch(sql, user.id, limit + 1, *after)
        items = [ProjectOut(**dict(row)) for row in rows[:limit]]
        page = ProjectPage(items=items, next_cursor=_next_cursor(secret, rows, limit))
        return page.model_dump(mode="json")

    return await _cached_page(services, request, user.id, "projects", load)


@router.post("/api/projects", status_code=status.HTTP_201_CREATED)
async def create_project(
    body: ProjectIn, user: CurrentUser, services: ServicesDep, announce: Announce
) -> ProjectOut:
    async with services.db.transaction() as conn:
        row = await conn.fetchrow(service.INSERT_PROJECT, user.id, body.name, body.color)
        assert row is not None
        await announce(conn, user.id, "project.created", ("project", row["id"]), {})
    return ProjectOut(**dict(row))


@router.get("/api/projects/{project_id}", response_model=ProjectOut)
async def get_project(
    project_id: RowId,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
) -> Any:
    async def load(conn: Connection) -> Record | None:
        return await conn.fetchrow(service.GET_PROJECT, user.id, project_id)

    row = await _conditional_row(
        request, response, services, user.id, ("project", project_id), load
    )
    return row if isinstance(row, Response) else ProjectOut(**dict(row))


@router.patch("/api/projects/{project_id}")
async def update_project(
    project_id: RowId,
    body: ProjectPatch,
    user: CurrentUser,
    services: ServicesDep,
    announce: Announce,
) -> ProjectOut:
    async with services.db.transaction() as conn:
        row = await conn.fetchrow(
            service.UPDATE_PROJECT, user.id, project_id, body.name, body.color
        )
        if row is None:
            raise HTTPException(404, "Project not found")
        await announce(conn, user.id, "project.updated", ("project", project_id), {})
    return ProjectOut(**dict(row))


@router.delete("/api/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(
    project_id: RowId, user: CurrentUser, services: ServicesDep, announce: Announce
) -> Response:
    async with services.db.transaction() as conn:
        if await conn.fetchval(service.DELETE_PROJECT, user.id, project_id) is None:
            raise HTTPException(404, "Project not found")
        await announce(conn, user.id, "project.deleted", ("project", project_id), {})
    return Response(status_code=204)


# --- tasks -------------------------------------------------------------------------------


@router.get("/api/tasks", response_model=TaskPage)
async def list_tasks(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    secret: Secret,
    project_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    completed: bool | None = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    after = _after(secret, cursor)

    async def load() -> dict[str, Any]:
        sql, _ = service.list_tasks_sql(
            project=project_id is not None,
            completed=completed,
            after=after is not None,
            limit=limit + 1,
        )
        args: list[Any] = [user.id]
        if project_id is not None:
            args.append(project_id)
        if after is not None:
            args.extend(after)
        async with services.db.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        page = TaskPage(
            items=[_task(row) for row in rows[:limit]],
            next_cursor=_next_cursor(secret, rows, limit),
        )
        return page.model_dump(mode="json")

    return await _cached_page(services, request, user.id, "tasks", load)


async def _cached_page(
    services: ServicesDep,
    request: Request,
    user_id: int,
    kind: str,
    load: Callable[[], Awaitable[dict[str, Any]]],
) -> Response:
    """A list page: 304 when the client has this data version, else from the cache."""
    cache = services.cache
    version = await data_version(cache, user_id)
    query = request.url.query
    headers = cache_headers(weak_etag(version, kind, query))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    ttl = services.settings.cache_list_ttl_seconds
    if ttl > 0:
        page = await cache.get_or_set(list_key(user_id, version, kind, query), load, ttl=ttl)
    else:
        page = await load()
    return Response(orjson.dumps(page), media_type="application/json", headers=headers)


@router.post("/api/tasks", status_code=status.HTTP_201_CREATED)
async def create_task(
    body: TaskIn, user: CurrentUser, services: ServicesDep, announce: Announce
) -> TaskOut:
    async with services.db.transaction() as conn:
        if body.project_id is not None and not await service.owns_project(
            conn, user.id, body.project_id
        ):
            raise HTTPException(422, "Unknown project_id")
        task_id = await conn.fetchval(
            service.INSERT_TASK, user.id, body.project_id, body.title, body.body, body.due_at
        )
        await announce(conn, user.id, "task.created", ("task", task_id), {})
        await request_embedding(services.jobs, conn, task_id)
        row = await service.get_task(conn, user.id, task_id)
    assert row is not None
    return _task(row)


@router.get("/api/tasks/{task_id}", response_model=TaskOut)
async def get_task(
    task_id: RowId, request: Request, response: Response, user: CurrentUser, services: ServicesDep
) -> Any:
    async def load(conn: Connection) -> Record | None:
        return await service.get_task(conn, user.id, task_id)

    row = await _conditional_row(request, response, services, user.id, ("task", task_id), load)
    return row if isinstance(row, Response) else _task(row)


async def _conditional_row(
    request: Request,
    response: Response,
    services: ServicesDep,
    user_id: int,
    resource: tuple[str, int],
    load: Callable[[Connection], Awaitable[Record | None]],
) -> Record | Response:
    """One owned row, or a 304 when the client's ETag is the current data version's."""
    headers = cache_headers(weak_etag(await data_version(services.cache, user_id), *resource))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    async with services.db.acquire() as conn:
        row = await load(conn)
    if row is None:
        raise HTTPException(404, f"{resource[0].capitalize()} not found")
    response.headers.update(headers)
    return row


@router.patch("/api/tasks/{task_id}")
async def update_task(
    task_id: RowId, body: TaskPatch, user: CurrentUser, services: ServicesDep, announce: Announce
) -> TaskOut:
    sent = body.model_fields_set
    async with services.db.transaction() as conn:
        if body.project_id is not None and not await service.owns_project(
            conn, user.id, body.project_id
        ):
            raise HTTPException(422, "Unknown project_id")
        updated = await conn.fetchrow(
            service.UPDATE_TASK,
            user.id,
            task_id,
            body.title,
            body.body,
            "project_id" in sent,
            body.project_id,
            "due_at" in sent,
            body.due_at,
            body.completed,
        )
        if updated is None:
            raise HTTPException(404, "Task not found")
        event = "task.updated"
        if body.completed is not None:
            event = "task.completed" if body.completed else "task.reopened"
        await announce(conn, user.id, event, ("task", task_id), {})
        if "title" in sent or "body" in sent:
            await request_embedding(services.jobs, conn, task_id)
        row = await service.get_task(conn, user.id, task_id)
    assert row is not None
    return _task(row)


@router.delete("/api/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_task(
    task_id: RowId, user: CurrentUser, services: ServicesDep, announce: Announce
) -> Response:
    async with services.db.transaction() as conn:
        if await conn.fetchval(service.DELETE_TASK, user.id, task_id) is None:
            raise HTTPException(404, "Task not found")
        await announce(conn, user.id, "task.deleted", ("task", task_id), {})
    return Response(status_code=204)
