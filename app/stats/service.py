"""Statistics from a materialized view: the database's own cache for an expensive aggregate.

``user_stats`` (migration 0011) holds per-user task counts and last activity. It is
refreshed with ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` — readers keep reading the old
contents while the new ones are computed, which needs the view's unique index — by the
``pgfirst.refresh_user_stats`` job at most every STATS_REFRESH_SECONDS. So
``GET /api/stats/me`` is up to that many seconds (plus up to a minute of job scheduling)
behind the tasks table; the response says how old it is (``refreshed_at``).

A refresh recomputes the whole aggregate: its cost grows with the tasks table (measure it
with ``app`` logs: each refresh logs its duration). When it takes too long for the chosen
interval, move to incrementally maintained counters.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from pydantic import BaseModel

from app.config import Settings
from app.db import Database, Record
from app.jobs import JobKind
from app.jobs.cron import Cron

log = logging.getLogger(__name__)

# Taken with a transaction-level advisory lock so that two workers never refresh at once
# (a second CONCURRENTLY refresh would wait for the first anyway, then redo its work).
REFRESH_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('pgfirst.user_stats', 0))"
DUE = """
SELECT refreshed_at < now() - make_interval(secs => $1) FROM matview_refreshes
WHERE name = 'user_stats'
"""
MARK_REFRESHED = """
INSERT INTO matview_refreshes (name, refreshed_at) VALUES ('user_stats', now())
ON CONFLICT (name) DO UPDATE SET refreshed_at = now()
"""
STATS_FOR_USER = """
SELECT s.task_count, s.completed_count, s.last_activity_at, r.refreshed_at
FROM matview_refreshes r
LEFT JOIN user_stats s ON s.user_id = $1
WHERE r.name = 'user_stats'
"""


async def refresh_user_stats(db: Database, *, every: float = 0.0) -> bool:
    """Refresh ``user_stats`` if its last refresh is older than ``every`` seconds.

    Returns True when this call refreshed it.
    """
    async with db.transaction() as conn:
        if not await conn.fetchval(REFRESH_LOCK):
            return False
        if every > 0 and not await conn.fetchval(DUE, every):
            return False
        started = time.perf_counter()
        await conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY user_stats")
        await conn.execute(MARK_REFRESHED)
    log.info("user_stats refreshed in %.3fs", time.perf_counter() - started)
    return True


class UserStats(BaseModel):
    task_count: int
    completed_count: int
    open_count: int
    last_activity_at: datetime | None
    refreshed_at: datetime


async def read_user_stats(db: Database, user_id: int) -> UserStats | None:
    """The user's row of the view as of its last refresh; None before the first refresh."""
    async with db.acquire(read=True) as conn:
        row: Record | None = await conn.fetchrow(STATS_FOR_USER, user_id)
    if row is None:
        return None
    tasks = row["task_count"] or 0
    completed = row["completed_count"] or 0
    return UserStats(
        task_count=tasks,
        completed_count=completed,
        open_count=tasks - completed,
        last_activity_at=row["last_activity_at"],
        refreshed_at=row["refreshed_at"],
    )


REFRESH_JOB = "pgfirst.refresh_user_stats"


def stats_jobs(db: Database, settings: Settings) -> list[JobKind]:
    """``pgfirst.refresh_user_stats``: checked every minute, refreshes when due."""

    async def refresh() -> bool:
        return await refresh_user_stats(db, every=settings.stats_refresh_seconds)

    return [JobKind(REFRESH_JOB, refresh, timeout=600, cron=Cron.parse("* * * * *"))]
