"""GET /api/stats/me: the caller's task counts from the ``user_stats`` view."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from app.cache.http import cache_headers, not_modified, weak_etag
from app.deps import CurrentUser, DatabaseDep
from app.observability.errors import error_responses
from app.stats.service import UserStats, read_user_stats

router = APIRouter(tags=["stats"])


@router.get("/api/stats/me", response_model=UserStats, responses=error_responses(503))
async def my_stats(
    request: Request, response: Response, user: CurrentUser, db: DatabaseDep
) -> UserStats | Response:
    """Your task counts from the ``user_stats`` view, as of ``refreshed_at``."""
    stats = await read_user_stats(db, user.id)
    if stats is None:
        raise HTTPException(503, "Statistics are not available yet")
    # Cacheable by the browser for a minute: the view itself changes far less often.
    headers = cache_headers(
        weak_etag("stats", user.id, stats.refreshed_at.isoformat()), "private, max-age=60"
    )
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    response.headers.update(headers)
    return stats
