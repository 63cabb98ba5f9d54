"""A user's activity feed: keyset pagination on (created_at, id), newest first.

Partition pruning needs plain range predicates on created_at (PostgreSQL does not prune
on the row comparison ``(created_at, id) < cursor``), so the query states both ends:

- the upper end is the cursor's ``created_at`` (redundant with the row comparison, but
  prunable); on the first page it is the app's clock plus ``CLOCK_MARGIN``. With both ends
  bound, the premade future partitions and DEFAULT are pruned too, and planning a page
  costs about what planning the same query on one table does (docs/benchmarks.md);
- the lower end is a widening window: first the last ~month before the cursor, then the
  last year, then everything. Most pages fill from the first window, which touches one or
  two partitions; a user with sparse activity costs one or two more short queries.

Each partition answers from its (user_id, created_at DESC, id DESC) index and LIMIT stops
the scan as soon as a page is full. docs/activity.md shows the plan.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from app.db import Connection
from app.pagination import read_timestamp_cursor, timestamp_cursor

FIRST_PAGE = """
SELECT id, action, subject_type, subject_id, metadata, created_at
FROM activity_logs
WHERE user_id = $1
  AND created_at > $2
  AND created_at <= $3
ORDER BY created_at DESC, id DESC
LIMIT $4
"""
NEXT_PAGE = """
SELECT id, action, subject_type, subject_id, metadata, created_at
FROM activity_logs
WHERE user_id = $1
  AND created_at <= $2
  AND (created_at, id) < ($2, $3)
  AND created_at > $4
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
# Lower ends tried in turn; None means unbounded.
WINDOWS = (timedelta(days=32), timedelta(days=370), None)
UNBOUNDED = datetime(1, 1, 1, tzinfo=UTC)
# Rows are stamped by the database's clock; the first page reaches this far past the app's
# so that a database clock slightly ahead hides nothing.
CLOCK_MARGIN = timedelta(hours=1)


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
    after = read_timestamp_cursor(secret, cursor) if cursor is not None else None
    anchor = after[0] if after else datetime.now(UTC)
    for window in WINDOWS:
        lower = anchor - window if window else UNBOUNDED
        if after is None:
            rows = await conn.fetch(FIRST_PAGE, user_id, lower, anchor + CLOCK_MARGIN, limit + 1)
        else:
            rows = await conn.fetch(NEXT_PAGE, user_id, after[0], after[1], lower, limit + 1)
        if len(rows) > limit:
            break
    items = [ActivityEntry(**dict(row)) for row in rows[:limit]]
    has_more = len(rows) > limit
    next_cursor = timestamp_cursor(secret, items[-1].created_at, items[-1].id) if has_more else None
    return ActivityPage(items=items, next_cursor=next_cursor)
