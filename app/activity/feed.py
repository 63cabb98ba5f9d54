"""A user's activity feed: keyset pagination on (created_at, id), newest first.

The redundant ``created_at <= $2`` next to the row comparison is what lets PostgreSQL
prune partitions newer than the cursor (it does not prune on row comparisons); each
remaining partition answers from its (user_id, created_at DESC, id DESC) index, and
LIMIT stops the merge as soon as a page is full. docs/activity.md shows the plan.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.db import Connection
from app.pagination import read_timestamp_cursor, timestamp_cursor

FIRST_PAGE = """
SELECT id, action, subject_type, subject_id, metadata, created_at
FROM activity_logs
WHERE user_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
NEXT_PAGE = """
SELECT id, action, subject_type, subject_id, metadata, created_at
FROM activity_logs
WHERE user_id = $1
  AND created_at <= $2
  AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC
LIMIT $4
"""


class ActivityEntry(BaseModel):
    id: int
    action: str
    subject_type: str | None
    subject_id: int | None
    metadata: dict[str, Any]
    created_at: datetime


class ActivityPage(BaseModel):
    items: list[ActivityEntry]
    next_cursor: str | None


async def read_feed(
    conn: Connection, secret: str, user_id: int, *, limit: int, cursor: str | None = None
) -> ActivityPage:
    """One page of ``user_id``'s feed; raises InvalidCursor for a forged cursor."""
    if cursor is None:
        rows = await conn.fetch(FIRST_PAGE, user_id, limit + 1)
    else:
        created_at, row_id = read_timestamp_cursor(secret, cursor)
        rows = await conn.fetch(NEXT_PAGE, user_id, created_at, row_id, limit + 1)
    items = [ActivityEntry(**dict(row)) for row in rows[:limit]]
    has_more = len(rows) > limit
    next_cursor = timestamp_cursor(secret, items[-1].created_at, items[-1].id) if has_more else None
    return ActivityPage(items=items, next_cursor=next_cursor)
