"""Background jobs on one PostgreSQL table: the "Redis + Celery/BullMQ" box, replaced.

    from app.jobs import job, enqueue

    @job(queue="mail", max_attempts=5, timeout=30)
    async def send_welcome(user_id: int) -> None: ...

    await enqueue("app.users.send_welcome", {"user_id": 42}, conn=conn)  # with the txn

A worker runs the job kinds it is given: pgfirst's own, and those of the modules named in
JOBS_MODULES (or ``app worker --import``). Inside a job, ``current_services.get()`` (from
``app.services``) gives the database, cache and the rest.

Technique: ``FOR UPDATE SKIP LOCKED`` batch claims, wake-ups through the process's notifier
(LISTEN/NOTIFY) with polling as fallback, leases with heartbeats, batched completion,
exponential backoff with jitter, a dead state after max attempts, unique keys, and
maintenance (rescue, queue sampling, periodic jobs) by one leader elected through a lease
row. Modules: ``registry.py`` (``@job``), ``queue.py`` (enqueue, retry, cancel),
``worker.py`` (claim loop, execution, shutdown), ``bookkeeping.py`` (the worker's writes),
``maintenance.py`` and ``leader.py`` (the leader), ``sql.py``, ``cron.py``,
``housekeeping.py`` (pruning), ``metrics.py``, ``router.py`` (/ops/jobs); docs/jobs.md.

Signals: queue depth > 1,000 / 10,000 and oldest wait > 30 s / 5 min mean workers cannot
keep up — add worker processes (``app worker``), and if job work hurts HTTP latency, set
JOBS_INLINE_WORKER=false so jobs leave the web process. A dedicated broker pays only when
one Postgres cannot absorb the job writes (tens of thousands per second on this design).
"""

from __future__ import annotations

import asyncio

from app.jobs.queue import Jobs, cancel_job, current_jobs, enqueue, enqueue_many, retry_job
from app.jobs.registry import JobKind, JobRegistry, job, jobs_in

__all__ = [
    "JobKind",
    "JobRegistry",
    "Jobs",
    "cancel_job",
    "current_jobs",
    "enqueue",
    "enqueue_many",
    "job",
    "jobs_in",
    "retry_job",
    "run_worker",
]


async def run_worker(
    queues: list[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
) -> None:
    """Run a worker on the open services until cancelled (or, with ``burst``, until idle)."""
    from app.jobs.worker import Worker

    worker = Worker(current_jobs.get(), queues=queues, concurrency=concurrency, burst=burst)
    try:
        await worker.run()
    except asyncio.CancelledError:
        worker.stop()
        raise
