"""Background jobs on one PostgreSQL table: the "Redis + Celery/BullMQ" box, replaced.

    from app.jobs import job, enqueue

    @job(queue="mail", max_attempts=5, timeout=30)
    async def send_welcome(user_id: int) -> None: ...

    await enqueue("app.users.send_welcome", {"user_id": 42}, conn=conn)  # with the txn

Technique: ``FOR UPDATE SKIP LOCKED`` batch claims, LISTEN/NOTIFY wake-up with polling as
fallback, leases with heartbeats, batched completion, exponential backoff with jitter, a
dead state after max attempts, unique keys, periodic jobs that run once per slot across
all workers (``worker.py``, ``queue.py``, docs/jobs.md).

Signals: queue depth > 1,000 / 10,000 and oldest wait > 30 s / 5 min mean workers cannot
keep up — add worker processes (``app worker``), and if job work hurts HTTP latency, set
JOBS_INLINE_WORKER=false so jobs leave the web process. A dedicated broker pays only when
one Postgres cannot absorb the job writes (tens of thousands per second on this design).
"""

from __future__ import annotations

from app.jobs.queue import cancel_job, enqueue, enqueue_many, retry_job
from app.jobs.registry import REGISTRY, job

__all__ = [
    "REGISTRY",
    "cancel_job",
    "enqueue",
    "enqueue_many",
    "job",
    "retry_job",
    "run_worker",
]


async def run_worker(
    queues: list[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
) -> None:
    """Run a worker in this process until cancelled (or, with ``burst``, until idle)."""
    import asyncio

    from app import builtin_jobs  # noqa: F401 - registers pgfirst's own jobs
    from app.config import get_settings
    from app.db import get_database
    from app.jobs.worker import Worker

    worker = Worker(
        await get_database(), get_settings(), queues=queues, concurrency=concurrency, burst=burst
    )
    try:
        await worker.run()
    except asyncio.CancelledError:
        worker.stop()
        raise
