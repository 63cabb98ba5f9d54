"""The queue's own job: ``pgfirst.prune_jobs`` deletes finished jobs past the retention.

Finished jobs (dead, cancelled, and succeeded with JOBS_KEEP_SUCCEEDED) stay
JOBS_RETENTION_HOURS for inspection, then go in batches of 10,000, each its own short
statement so no long transaction holds back vacuum. A periodic job rather than a step of
the maintenance leader: it can run long on a big backlog, and a job slot has a timeout and
retries while the leader's rounds must stay short to renew its lease (``maintenance.py``).
The same job drops the per-second success counts (``job_successes``) older than an hour.
"""

from __future__ import annotations

from app.config import Settings
from app.db import Database
from app.jobs.cron import Cron
from app.jobs.registry import JobKind

PRUNE_JOBS = """
DELETE FROM jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE finished_at < now() - make_interval(secs => $1)
    LIMIT $2
))
"""


# job_successes feeds /ops/jobs' last minute; an hour of it is plenty (history of
# throughput is jobs_finished_total in /metrics).
PRUNE_SUCCESS_COUNTS = "DELETE FROM job_successes WHERE counted_at < now() - interval '1 hour'"


async def prune_jobs(db: Database, older_than_seconds: float, batch: int = 10_000) -> int:
    """Delete finished jobs older than the retention, a batch at a time; returns the count.

    Success counts older than an hour go too (at most one row per worker a second).
    """
    async with db.acquire() as conn:
        await conn.execute(PRUNE_SUCCESS_COUNTS)
    deleted = 0
    while True:
        async with db.acquire() as conn:
            count = int((await conn.execute(PRUNE_JOBS, older_than_seconds, batch)).split()[-1])
        deleted += count
        if count < batch:
            return deleted


def queue_jobs(db: Database, settings: Settings) -> list[JobKind]:
    async def prune() -> int:
        return await prune_jobs(db, settings.jobs_retention_hours * 3600)

    return [JobKind("pgfirst.prune_jobs", prune, cron=Cron.parse("*/10 * * * *"))]
