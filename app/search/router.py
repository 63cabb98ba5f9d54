"""GET /api/search and GET /api/tasks/{id}/similar."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from app.deps import CurrentUser, ReadConn, ServicesDep
from app.observability.errors import error_responses
from app.search import service as sql

router = APIRouter(tags=["search"])
Mode = Literal["fulltext", "fuzzy", "semantic", "hybrid"]


class Hit(BaseModel):
    id: int
    title: str
    snippet: str
    score: float


class SearchResults(BaseModel):
    mode: Mode
    items: list[Hit]


@router.get("/api/search")
async def search_tasks(
    services: ServicesDep,
    user: CurrentUser,
    conn: ReadConn,
    # Longer is refused (422); what is searched is the first SEARCH_QUERY_MAX_CHARS of it.
    q: Annotated[str, Query(min_length=1, max_length=1_000)],
    mode: Mode = "fulltext",
    limit: Annotated[int, Query(ge=1)] = 20,
) -> SearchResults:
    settings = services.settings
    if limit > settings.search_max_limit:
        raise HTTPException(422, f"limit must be at most {settings.search_max_limit}")
    query = q.strip()[: settings.search_query_max_chars]
    if not query:
        return SearchResults(mode=mode, items=[])
    if mode == "fulltext":
        rows = await sql.search_fulltext(conn, settings, user.id, query, limit)
    elif mode == "fuzzy":
        rows = await sql.search_fuzzy(conn, settings, user.id, query, limit)
    else:
        vector = await asyncio.to_thread(services.embedder.embed, query)
        if mode == "semantic":
            rows = await sql.search_semantic(conn, services.cache, settings, user.id, vector, limit)
        else:
            rows = await sql.search_hybrid(
                conn, services.cache, settings, user.id, query, vector, limit
            )
    return SearchResults(mode=mode, items=[Hit(**hit) for hit in sql.rows_out(rows)])


@router.get("/api/tasks/{task_id}/similar", responses=error_responses(404))
async def list_similar_tasks(
    services: ServicesDep,
    user: CurrentUser,
    conn: ReadConn,
    task_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> SearchResults:
    embedded = await conn.fetchval(sql.OWNS_TASK, user.id, task_id)
    if embedded is None:
        raise HTTPException(404, "Task not found")
    if not embedded:
        return SearchResults(mode="semantic", items=[])  # its embedding job has not run yet
    rows = await sql.similar_tasks(conn, services.cache, services.settings, user.id, task_id, limit)
    return SearchResults(mode="semantic", items=[Hit(**hit) for hit in sql.rows_out(rows)])
