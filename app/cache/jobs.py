"""The cache's job: ``pgfirst.purge_cache`` keeps the Postgres table bounded."""

from __future__ import annotations

from app.cache import Cache
from app.jobs import JobKind
from app.jobs.cron import Cron


def cache_jobs(cache: Cache) -> list[JobKind]:
    async def purge_cache() -> dict[str, int]:
        """Expired rows out, then the oldest past CACHE_MAX_ENTRIES (bounded batches)."""
        expired, evicted = await cache.purge()
        return {"expired": expired, "evicted": evicted}

    return [JobKind("pgfirst.purge_cache", purge_cache, cron=Cron.parse("* * * * *"))]
