"""Enqueueing and administering jobs: ``Jobs``, the jobs capability of one process.

``Jobs`` holds what enqueueing and working need — the database, the settings, the registry
of job kinds and the notifier — and is built by ``open_services``. The module-level
``enqueue``/``enqueue_many``/``retry_job``/``cancel_job`` use the one of the open services.

Enqueue is one statement however many jobs: rows arrive as arrays and leave through
``unnest``, conflicting unique keys are skipped, and one ``pg_notify`` per distinct queue
wakes idle workers — sent at COMMIT, so with ``conn`` a rolled-back business write leaves
neither a job nor a wake-up. The notification carries the queue name only, never args.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.config import Settings
from app.current import Current
from app.db import Connection, Database
from app.jobs.registry import JobRegistry
from app.notifier import Notifier
from app.observability.logging import request_id_var

WAKE_CHANNEL = "pgfirst_jobs"
CANCEL_CHANNEL = "pgfirst_jobs_cancel"

# Row order of INSERT ... SELECT FROM unnest() is the input order; the caller maps the
# returned ids back by position (rows without a unique key are never skipped) and key.
ENQUEUE = """
WITH inserted AS (
    INSERT INTO jobs (queue, name, args, priority, run_at, max_attempts, unique_key, request_id)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::jsonb[], $4::smallint[], $5::timestamptz[],
        $6::integer[], $7::text[], $8::text[]
    )
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
    DO NOTHING
    RETURNING id, unique_key, queue
), woken AS (
    SELECT pg_notify($9, queue) FROM (SELECT DISTINCT queue FROM inserted) AS queues
)
SELECT id, unique_key FROM inserted CROSS JOIN (SELECT count(*) FROM woken) AS sent
"""
RETRY = """
UPDATE jobs
SET state = 'available', run_at = now(), finished_at = NULL,
    max_attempts = greatest(max_attempts, attempt + 1)
WHERE id = $1 AND state IN ('dead', 'cancelled')
RETURNING queue
"""
CANCEL = """
UPDATE jobs
SET state = 'cancelled', finished_at = now(), locked_until = NULL, locked_by = NULL
WHERE id = $1 AND state IN ('available', 'running')
RETURNING id
"""


class Jobs:
    """Enqueue, retry and cancel jobs; ``worker()`` builds a worker over the same parts."""

    def __init__(
        self, db: Database, settings: Settings, registry: JobRegistry, notifier: Notifier
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry
        self.notifier = notifier

    async def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        unique_key: str | None = None,
    ) -> int | None:
        """Enqueue one job; its id, or None when ``unique_key`` is already waiting or running."""
        ids = await self.enqueue_many(
            name,
            [args or {}],
            conn=conn,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            unique_keys=[unique_key],
        )
        return ids[0]

    async def enqueue_many(
        self,
        name: str,
        args_list: Sequence[dict[str, Any]],
        *,
        conn: Connection | None = None,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        unique_keys: Sequence[str | None] | None = None,
    ) -> list[int | None]:
        """Enqueue many jobs of one kind in one statement; ids in input order (None: dedup).

        A name this process does not know goes to ``queue`` (else "default") with the
        default attempts: the worker that knows it runs it.
        """
        if not args_list:
            return []
        kind = self.registry.get(name)
        target_queue = queue or (kind.queue if kind else "default")
        attempts = (kind.max_attempts if kind else None) or self.settings.jobs_default_max_attempts
        when = run_at or datetime.now(UTC)
        if delay is not None:
            when += delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
        keys = list(unique_keys) if unique_keys is not None else [None] * len(args_list)
        count = len(args_list)
        params = (
            [target_queue] * count,
            [name] * count,
            list(args_list),
            [priority] * count,
            [when] * count,
            [attempts] * count,
            keys,
            [request_id_var.get()] * count,
            WAKE_CHANNEL,
        )
        if conn is not None:
            rows = await conn.fetch(ENQUEUE, *params)
        else:
            async with self.db.acquire() as own:
                rows = await own.fetch(ENQUEUE, *params)
        by_key = {row["unique_key"]: row["id"] for row in rows if row["unique_key"] is not None}
        unkeyed = iter(row["id"] for row in rows if row["unique_key"] is None)
        return [by_key.get(key) if key is not None else next(unkeyed) for key in keys]

    async def retry(self, job_id: int) -> bool:
        """Make a dead or cancelled job available again (one more attempt allowed)."""
        async with self.db.transaction() as conn:
            queue = await conn.fetchval(RETRY, job_id)
            if queue is not None:
                await conn.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, queue)
        return queue is not None

    async def cancel(self, job_id: int) -> bool:
        """Cancel a waiting or running job; a running one is stopped by its worker at once."""
        async with self.db.transaction() as conn:
            cancelled = await conn.fetchval(CANCEL, job_id)
            if cancelled is not None:
                await conn.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, str(job_id))
        return cancelled is not None


current_jobs: Current[Jobs] = Current("the job queue")


async def enqueue(
    name: str,
    args: dict[str, Any] | None = None,
    *,
    conn: Connection | None = None,
    queue: str | None = None,
    priority: int = 0,
    run_at: datetime | None = None,
    delay: float | timedelta | None = None,
    unique_key: str | None = None,
) -> int | None:
    """``Jobs.enqueue`` on the open services' queue."""
    return await current_jobs.get().enqueue(
        name,
        args,
        conn=conn,
        queue=queue,
        priority=priority,
        run_at=run_at,
        delay=delay,
        unique_key=unique_key,
    )


async def enqueue_many(
    name: str,
    args_list: Sequence[dict[str, Any]],
    *,
    conn: Connection | None = None,
    queue: str | None = None,
    priority: int = 0,
    run_at: datetime | None = None,
    delay: float | timedelta | None = None,
    unique_keys: Sequence[str | None] | None = None,
) -> list[int | None]:
    """``Jobs.enqueue_many`` on the open services' queue."""
    return await current_jobs.get().enqueue_many(
        name,
        args_list,
        conn=conn,
        queue=queue,
        priority=priority,
        run_at=run_at,
        delay=delay,
        unique_keys=unique_keys,
    )


async def retry_job(job_id: int) -> bool:
    return await current_jobs.get().retry(job_id)


async def cancel_job(job_id: int) -> bool:
    return await current_jobs.get().cancel(job_id)
