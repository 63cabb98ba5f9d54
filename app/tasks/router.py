"""/api/projects and /api/tasks: CRUD owned by the caller, keyset-paginated lists.

Handlers parse, authorise and shape; the SQL and the transactions are in ``service.py``.
GETs carry a weak ETag from the caller's data version and answer ``If-None-Match`` with
304 before reading anything else; list pages are cached per data version
(``caching.py``). The router's lifespan starts the process's ``DataVersions`` once the
app's services are open, keeps it in ``app.state.data_versions``, and stops it first.

Handlers take what they need from one dependency, ``Tasks`` (built once by the lifespan),
besides the user: FastAPI resolves every dependency of every request anew, at about 10 µs
each on this machine, which for the task list was more than the list's own work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Request,
    Response,
    status,
)
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from app.cache.http import cache_headers, not_modified
from app.deps import CurrentUser, query_parameters, read_query
from app.observability.errors import error_responses
from app.pagination import InvalidCursor, read_timestamp_cursor, timestamp_cursor
from app.services import Services
from app.tasks import service
from app.tasks.caching import DataVersions, list_key, version_etag
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


@dataclass(frozen=True, slots=True)
class TasksContext:
    """What the handlers here use, the same for every request of the app's lifetime."""

    services: Services
    versions: DataVersions
    announce: service.Announcer
    secret: str  # signs the pagination cursors


@asynccontextmanager
async def _data_versions(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    versions = DataVersions(services.db, services.notifier)
    await versions.start()
    app.state.data_versions = versions
    app.state.tasks = TasksContext(
        services,
        versions,
        service.Announcer(services.broker, versions),
        services.settings.secret_key.get_secret_value(),
    )
    try:
        yield
    finally:
        del app.state.tasks
        del app.state.data_versions
        await versions.stop()


router = APIRouter(tags=["tasks"], lifespan=_data_versions)

RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
OpenApiResponses = dict[int | str, dict[str, Any]]


# The list pages' query strings, each read as one model (``read_query``: one validation
# per request instead of FastAPI's work per declared parameter).
class ProjectListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


class TaskListQuery(BaseModel):
    project_id: int | None = Field(None, ge=1, le=2**63 - 1)
    completed: bool | None = None
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


NOT_FOUND: OpenApiResponses = error_responses(404)
BAD_CURSOR: OpenApiResponses = error_responses(400)
BAD_QUERY: OpenApiResponses = error_responses(422)
NOT_MODIFIED: OpenApiResponses = {304: {"description": "The If-None-Match ETag is current"}}


# A coroutine: FastAPI runs a plain ``def`` dependency in its thread pool.
async def _tasks(connection: HTTPConnection) -> TasksContext:
    tasks: TasksContext = connection.app.state.tasks
    return tasks


Tasks = Annotated[TasksContext, Depends(_tasks)]


def _after(secret: str, cursor: str | None) -> service.After | None:
    if cursor is None:
        return None
    try:
        return read_timestamp_cursor(secret, cursor)
    except InvalidCursor:
        raise HTTPException(400, "Invalid cursor") from None


def _next_cursor(secret: str, rows: Sequence[TaskOut | ProjectOut], limit: int) -> str | None:
    """Rows were fetched with LIMIT limit + 1: one more means another page follows."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return timestamp_cursor(secret, last.created_at, last.id)


async def _cached_page(
    request: Request,
    tasks: TasksContext,
    user_id: int,
    kind: str,
    load: Callable[[], Awaitable[BaseModel]],
) -> Response:
    """A list page: 304 when the client has this data version, else from the cache."""
    services = tasks.services
    version = await tasks.versions.read(user_id)
    # What request.url.query returns, without building the whole URL for it.
    query = request.scope.get("query_string", b"").decode()
    headers = cache_headers(version_etag(user_id, version, kind, query))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged

    async def page() -> dict[str, Any]:
        return (await load()).model_dump(mode="json")

    ttl = services.settings.cache_list_ttl_seconds
    if ttl > 0:
        body = await services.cache.get_or_set(
            list_key(user_id, version, kind, query), page, ttl=ttl
        )
    else:
        body = await page()
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


async def _unchanged(
    request: Request, response: Response, tasks: TasksContext, user_id: int, *resource: object
) -> Response | None:
    """The 304 for one row when the client holds the current tag; else sets the headers."""
    version = await tasks.versions.read(user_id)
    headers = cache_headers(version_etag(user_id, version, *resource))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    response.headers.update(headers)
    return None


# --- tasks -------------------------------------------------------------------------------
# Before the projects: the router tries routes in order, and the task list is the busiest.


@router.get(
    "/api/tasks",
    response_model=TaskPage,
    responses={**NOT_MODIFIED, **BAD_CURSOR, **BAD_QUERY},
    openapi_extra=query_parameters(TaskListQuery),
)
async def list_tasks(request: Request, user: CurrentUser, tasks: Tasks) -> Response:
    query = read_query(TaskListQuery, request)
    secret = tasks.secret
    after = _after(secret, query.cursor)
    limit = query.limit

    async def load() -> TaskPage:
        rows = await service.list_tasks(
            tasks.services.db,
            user.id,
            project_id=query.project_id,
            completed=query.completed,
            limit=limit + 1,
            after=after,
        )
        return TaskPage(items=rows[:limit], next_cursor=_next_cursor(secret, rows, limit))

    return await _cached_page(request, tasks, user.id, "tasks", load)


@router.post("/api/tasks", status_code=status.HTTP_201_CREATED)
async def create_task(body: TaskIn, user: CurrentUser, tasks: Tasks) -> TaskOut:
    services = tasks.services
    try:
        return await service.create_task(services.db, tasks.announce, services.jobs, user.id, body)
    except service.UnknownProject:
        raise HTTPException(422, "Unknown project_id") from None


@router.get("/api/tasks/{task_id}", response_model=TaskOut, responses={**NOT_MODIFIED, **NOT_FOUND})
async def get_task(
    task_id: RowId,
    request: Request,
    response: Response,
    user: CurrentUser,
    tasks: Tasks,
) -> TaskOut | Response:
    if unchanged := await _unchanged(request, response, tasks, user.id, "task", task_id):
        return unchanged
    task = await service.get_task(tasks.services.db, user.id, task_id)
    if task is None:
        raise HTTPException(404, "Task not found")
    return task


@router.patch("/api/tasks/{task_id}", responses=NOT_FOUND)
async def update_task(task_id: RowId, body: TaskPatch, user: CurrentUser, tasks: Tasks) -> TaskOut:
    services = tasks.services
    try:
        task = await service.update_task(
            services.db, tasks.announce, services.jobs, user.id, task_id, body
        )
    except service.UnknownProject:
        raise HTTPException(422, "Unknown project_id") from None
    if task is None:
        raise HTTPException(404, "Task not found")
    return task


@router.delete("/api/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_task(task_id: RowId, user: CurrentUser, tasks: Tasks) -> Response:
    if not await service.delete_task(tasks.services.db, tasks.announce, user.id, task_id):
        raise HTTPException(404, "Task not found")
    return Response(status_code=204)


# --- projects ----------------------------------------------------------------------------


@router.get(
    "/api/projects",
    response_model=ProjectPage,
    responses={**NOT_MODIFIED, **BAD_CURSOR, **BAD_QUERY},
    openapi_extra=query_parameters(ProjectListQuery),
)
async def list_projects(request: Request, user: CurrentUser, tasks: Tasks) -> Response:
    query = read_query(ProjectListQuery, request)
    secret = tasks.secret
    after = _after(secret, query.cursor)
    limit = query.limit

    async def load() -> ProjectPage:
        rows = await service.list_projects(tasks.services.db, user.id, limit=limit + 1, after=after)
        return ProjectPage(items=rows[:limit], next_cursor=_next_cursor(secret, rows, limit))

    return await _cached_page(request, tasks, user.id, "projects", load)


@router.post("/api/projects", status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectIn, user: CurrentUser, tasks: Tasks) -> ProjectOut:
    return await service.create_project(tasks.services.db, tasks.announce, user.id, body)


@router.get(
    "/api/projects/{project_id}",
    response_model=ProjectOut,
    responses={**NOT_MODIFIED, **NOT_FOUND},
)
async def get_project(
    project_id: RowId,
    request: Request,
    response: Response,
    user: CurrentUser,
    tasks: Tasks,
) -> ProjectOut | Response:
    if unchanged := await _unchanged(request, response, tasks, user.id, "project", project_id):
        return unchanged
    project = await service.get_project(tasks.services.db, user.id, project_id)
    if project is None:
        raise HTTPException(404, "Project not found")
    return project


@router.patch("/api/projects/{project_id}", responses=NOT_FOUND)
async def update_project(
    project_id: RowId,
    body: ProjectPatch,
    user: CurrentUser,
    tasks: Tasks,
) -> ProjectOut:
    project = await service.update_project(
        tasks.services.db, tasks.announce, user.id, project_id, body
    )
    if project is None:
        raise HTTPException(404, "Project not found")
    return project


@router.delete(
    "/api/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND
)
async def delete_project(project_id: RowId, user: CurrentUser, tasks: Tasks) -> Response:
    if not await service.delete_project(tasks.services.db, tasks.announce, user.id, project_id):
        raise HTTPException(404, "Project not found")
    return Response(status_code=204)
