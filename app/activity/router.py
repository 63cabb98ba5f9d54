"""GET /api/activity: the caller's own activity, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from app.activity.feed import ActivityPage, read_feed
from app.deps import CurrentUser, ReadConn, SettingsDep
from app.observability.errors import error_responses
from app.pagination import InvalidCursor

router = APIRouter(tags=["activity"])


@router.get("/api/activity", responses=error_responses(400))
async def list_activity(
    settings: SettingsDep,
    user: CurrentUser,
    conn: ReadConn,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1)] = 20,
) -> ActivityPage:
    if limit > settings.activity_page_limit:
        raise HTTPException(422, f"limit must be at most {settings.activity_page_limit}")
    try:
        return await read_feed(
            conn, settings.secret_key.get_secret_value(), user.id, limit=limit, cursor=cursor
        )
    except InvalidCursor:
        raise HTTPException(400, "Invalid cursor") from None
