"""pgfirst's own jobs. Importing this module registers all of them with a worker:
email (app/auth/mail.py), embeddings (app/search) and the periodic housekeeping below.

- activity log partitions: make ahead, drain DEFAULT, retire (hourly; idempotent);
- pub/sub events past PUBSUB_RETENTION_SECONDS (hourly);
- rate-limit counters from past windows (hourly);
- finished jobs past JOBS_RETENTION_HOURS, in batches (every 10 minutes);
- expired cache entries and the cache size cap (every minute);
- the user_stats materialized view, every STATS_REFRESH_SECONDS (checked every minute).

Each runs once per slot across every worker (app/jobs/worker.py) and is a plain function
you can also call by hand (``app activity maintain`` does for the first).
"""

from __future__ import annotations

import app.auth.mail
import app.search
from app.config import get_settings
from app.db import get_database
from app.jobs import job

# Imported for their @job registrations.
_REGISTERED_ELSEWHERE = (app.auth.mail.SEND_EMAIL_JOB, app.search.EMBED_JOB)

PRUNE_JOBS = """
DELETE FROM jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE finished_at < now() - make_interval(secs => $1)
    LIMIT $2
))
"""


@job(name="pgfirst.maintain_activity_partitions", cron="7 * * * *", timeout=600)
async def maintain_activity_partitions() -> None:
    from app.activity.partitions import maintain

    settings = get_settings()
    await maintain(
        await get_database(),
        interval=settings.activity_partition_interval,
        premake=settings.activity_premake_periods,
        retention=settings.activity_retention_periods,
    )


@job(name="pgfirst.prune_events", cron="23 * * * *")
async def prune_events() -> None:
    from app.pubsub.postgres import prune_events as prune

    await prune(await get_database(), get_settings().pubsub_retention_seconds)


@job(name="pgfirst.prune_rate_limits", cron="37 * * * *")
async def prune_rate_limits() -> None:
    from app.auth.ratelimit import PostgresRateLimiter

    window = get_settings().rate_limit_window_seconds
    await PostgresRateLimiter(await get_database()).prune(older_than=max(3600, 2 * window))


@job(name="pgfirst.prune_jobs", cron="*/10 * * * *")
async def prune_jobs(batch: int = 10_000) -> int:
    """Delete finished jobs past the retention, a batch at a time; returns the count."""
    seconds = get_settings().jobs_retention_hours * 3600
    db = await get_database()
    deleted = 0
    while True:
        async with db.acquire() as conn:
            count = int((await conn.execute(PRUNE_JOBS, seconds, batch)).split()[-1])
        deleted += count
        if count < batch:
            return deleted


@job(name="pgfirst.purge_cache", cron="* * * * *")
async def purge_cache() -> dict[str, int]:
    """Expired cache rows out, then the oldest past CACHE_MAX_ENTRIES (bounded batches)."""
    from app.cache import cache

    expired, evicted = await cache.purge()
    return {"expired": expired, "evicted": evicted}


@job(name="pgfirst.refresh_user_stats", cron="* * * * *", timeout=600)
async def refresh_user_stats() -> bool:
    """REFRESH ... CONCURRENTLY user_stats when the last refresh is STATS_REFRESH_SECONDS old."""
    from app.cache.views import refresh_user_stats as refresh

    return await refresh(await get_database(), every=get_settings().stats_refresh_seconds)
