"""The worker: claim in batches, run with bounded concurrency, finish in batches.

Loop: claim a batch ahead of the free slots (``FOR UPDATE SKIP LOCKED``, so workers never
wait on each other and never get the same job), run each job as a task, and record the
successes in the next claim statement — one statement and one commit per batch for both
ends, because transactions per job are what bound a queue's throughput (docs/jobs.md).
The worker's bookkeeping pins the claim's plan (``enable_sort = off``) and does not wait
for the WAL flush (JOBS_SYNCHRONOUS_COMMIT): a lost claim or completion re-runs a job, it
never loses one. With nothing to claim the worker sleeps until a NOTIFY on
``pgfirst_jobs`` (sent when a job is committed) or the poll interval, whichever comes
first; without LISTEN (``DB_POOL_MODE=pgbouncer``, or a lost listener) polling alone keeps
it going.

Every lease/3 seconds the worker extends the leases of its running jobs (a job that was
cancelled meanwhile is not extended, and its task is cancelled), rescues jobs whose lease
ran out (their worker died: they are retried, never lost), schedules periodic jobs, and
reconnects a lost listener. Shutdown is two-step: stop claiming, give running jobs
JOBS_SHUTDOWN_GRACE seconds, then cancel them and release their leases so another worker
takes them at once, without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from app.db import Connection, Record
from app.jobs.queue import CANCEL_CHANNEL, WAKE_CHANNEL, Jobs
from app.notifier import Unlisten
from app.observability.logging import request_id_var

log = logging.getLogger(__name__)
# What a lost or restarting database raises; a claim loop survives these.
CLAIM_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

JOBS_FINISHED = Counter("jobs_finished_total", "Jobs finished, by outcome.", ["outcome"])
JOB_RUN_SECONDS = Histogram("job_run_seconds", "Time a job's handler ran.", ["name"])
JOB_WAIT_SECONDS = Histogram(
    "job_wait_seconds",
    "From run_at to claim.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800),
)
QUEUE_DEPTH = Gauge("jobs_available", "Jobs available to run now, by queue.", ["queue"])
SUCCEEDED = JOBS_FINISHED.labels("succeeded")


@functools.cache
def _run_seconds(name: str) -> Histogram:
    """The labelled child once per job kind (``labels()`` costs a lock and a dict per call)."""
    return JOB_RUN_SECONDS.labels(name)


CLAIM = """
WITH finished AS (
    UPDATE jobs
    SET state = 'succeeded', finished_at = now(), locked_until = NULL, locked_by = NULL
    WHERE id = ANY($5::bigint[]) AND locked_by = $4 AND locked_until IS NOT NULL
)
UPDATE jobs
SET state = 'running', attempt = attempt + 1,
    locked_until = now() + make_interval(secs => $3), locked_by = $4
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE state = 'available' AND queue = ANY($1::text[]) AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING id, name, args, attempt, max_attempts, request_id, priority, run_at,
          extract(epoch FROM now() - run_at) AS waited
"""
# The claim also records the successes since the last one (`finished`, $5): one statement
# and one commit per batch for both ends. A data-modifying CTE runs to completion even
# though nothing reads it; its rows (running) and the claimed ones (available) never meet.
# `id = ANY(ARRAY(subquery))` rather than a join to a CTE: the planner then fetches the
# claimed rows by primary key instead of hashing a scan of the whole table (a join's row
# estimate for a LIMIT-ed CTE is poor, and the scan grows with the table). RETURNING comes
# back in primary-key order, so the worker sorts the batch by priority again.

# Set at the start of each claim/complete/fail transaction (docs/jobs.md, "Durability"):
# - synchronous_commit off: the worker's own bookkeeping does not wait for the WAL flush.
#   A server crash can lose the last fraction of a second of claims and completions; such
#   a job is claimed again or rescued when its lease runs out, and runs again — the same
#   at-least-once promise a killed worker already gives. Enqueues stay synchronous.
# - enable_sort off: the claim must walk jobs_claim in order and stop after LIMIT rows.
#   Right after a burst of enqueues (before autovacuum's ANALYZE) the planner believes a
#   handful of jobs wait and prefers a bitmap scan plus a sort of *every* waiting job —
#   5-15 ms per claim at 20,000 jobs instead of 0.1 ms. With sorting off, the ordered
#   index scan is the only plan left.
BOOKKEEPING_DURABLE = "SET LOCAL enable_sort = off"
BOOKKEEPING_FAST = "SET LOCAL enable_sort = off; SET LOCAL synchronous_commit = off"
# The same for the claim loop's own connection, once per session (``Worker._claimer``).
CLAIMER_DURABLE = "SET enable_sort = off"
CLAIMER_FAST = "SET enable_sort = off; SET synchronous_commit = off"
# `locked_by = $2 AND locked_until IS NOT NULL` means "running, leased by this worker" (the
# jobs_lease_iff_running CHECK), without naming `state`: a `state = 'running'` condition
# lets the planner AND the primary-key lookup with a scan of the whole lease index, which
# still holds an entry for every job finished since the last vacuum.
COMPLETE = """
UPDATE jobs
SET state = 'succeeded', finished_at = now(), locked_until = NULL, locked_by = NULL
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
"""
FAIL = """
UPDATE jobs SET
    state = (CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END)::job_state,
    run_at = CASE WHEN attempt >= max_attempts THEN run_at
                  ELSE now() + make_interval(secs => $3) END,
    finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
    locked_until = NULL, locked_by = NULL,
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'error', $4::text, 'traceback', $5::text))
WHERE id = $1 AND locked_by = $2 AND locked_until IS NOT NULL
RETURNING state::text
"""
HEARTBEAT = """
UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
RETURNING id
"""
# SKIP LOCKED: a job being finished by its (slow, not dead) worker right now is left alone.
RESCUE = """
UPDATE jobs SET
    state = (CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END)::job_state,
    finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
    run_at = now(), locked_until = NULL, locked_by = NULL,
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'error', 'lease expired; worker ' || locked_by || ' lost'))
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs WHERE state = 'running' AND locked_until < now()
    FOR UPDATE SKIP LOCKED
))
RETURNING id
"""
RELEASE = """
UPDATE jobs
SET state = 'available', run_at = now(), attempt = greatest(attempt - 1, 0),
    locked_until = NULL, locked_by = NULL
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
"""
DEPTH = """
SELECT queue, count(*) AS n FROM jobs
WHERE state = 'available' AND run_at <= now()
GROUP BY queue
"""
# Two statements, not one: an UPDATE cannot see a row inserted by a CTE of its own statement.
SEED_SLOT = """
INSERT INTO job_schedule (name, last_slot) VALUES ($1, '-infinity')
ON CONFLICT (name) DO NOTHING
"""
CLAIM_SLOT = """
UPDATE job_schedule SET last_slot = $2 WHERE name = $1 AND last_slot < $2
RETURNING name
"""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    name: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    request_id: str | None


class Worker:
    def __init__(
        self,
        jobs: Jobs,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        self.jobs = jobs
        self.db = jobs.db
        self.settings = settings = jobs.settings
        self.registry = jobs.registry
        self.queues = queues or self.registry.queues()
        self.concurrency = concurrency or settings.jobs_concurrency
        self.burst = burst
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._running: dict[int, asyncio.Task[None]] = {}
        self._ready: deque[ClaimedJob] = deque()  # claimed (leased), not started yet
        self._cancelled: set[int] = set()
        self._succeeded: list[int] = []
        self._wake = asyncio.Event()
        # Claim again while half a batch is still waiting, so slots never idle on a claim.
        self._low_water = max(self.concurrency, settings.jobs_claim_batch // 2)
        self._stopping = asyncio.Event()
        self._unlisten: list[Unlisten] = []
        self._claim_conn: asyncpg.Connection[Record] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Work until ``stop()`` (or, in burst mode, until nothing is left to do)."""
        kinds = sorted(kind.name for kind in self.registry if kind.queue in self.queues)
        log.info(
            "worker %s serving queues %s, %d at a time%s; %d job kinds: %s",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            " (burst)" if self.burst else "",
            len(kinds),
            ", ".join(kinds),
        )
        await self._listen()
        await self._maintain()
        upkeep = asyncio.create_task(self._upkeep_loop(), name="jobs-upkeep")
        try:
            await self._claim_loop()
        finally:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
            await self._shutdown()
            log.info("worker %s stopped", self.id)

    def stop(self) -> None:
        """Step one of shutdown: stop claiming. ``run()`` then finishes the rest."""
        self._stopping.set()
        self._wake.set()

    # --- claiming and running ------------------------------------------------------------

    async def _claim_loop(self) -> None:
        interval = self.settings.jobs_poll_interval
        batch = self.settings.jobs_claim_batch
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            # Claim a whole batch ahead of the free slots whenever fewer than half a batch
            # wait, so the next jobs are leased before a slot frees up and one statement
            # feeds many jobs. By default a worker holds at most concurrency + 1.5 batches.
            claimed = 0
            tried = False
            try:
                if len(self._ready) < self._low_water:
                    tried = True
                    claimed = await self._claim(batch)
                self._start_ready()
                # Successes are recorded a batch at a time, or as soon as the worker is idle.
                if len(self._succeeded) >= batch or not (self._running or self._ready):
                    await self._flush()
            except CLAIM_ERRORS as exc:
                # The database went away (restart, failover, network): keep running the
                # jobs in hand and try again with backoff instead of dying.
                failures += 1
                if self.burst and failures >= 5:
                    raise
                delay = min(5.0, 0.1 * 2**failures)
                log.warning("jobs: claim failed (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                continue
            failures = 0
            if claimed and len(self._ready) < self._low_water:
                continue
            if not self._running and not self._ready:
                if not tried:
                    continue  # drained while flushing: look for more before sleeping
                if self.burst:
                    return
            # Woken by a NOTIFY, by stop(), or by a finished job once the claimed-ahead
            # jobs run low (not by every finished job: that is a loop turn per job).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    def _start_ready(self) -> None:
        while self._ready and len(self._running) < self.concurrency:
            job = self._ready.popleft()
            self._running[job.id] = asyncio.create_task(self._execute(job), name=f"job-{job.id}")

    async def _claim(self, limit: int) -> int:
        """Record successes, lease up to ``limit`` jobs, queue them in order, start what fits.

        Returns how many were claimed.
        """
        done, self._succeeded = self._succeeded, []
        try:
            rows = await self._run_claim(limit, done)
        except BaseException:
            self._succeeded[:0] = done  # recorded by the next try (a repeat is a no-op)
            raise
        for row in sorted(rows, key=lambda r: (-r["priority"], r["run_at"], r["id"])):
            JOB_WAIT_SECONDS.observe(max(0.0, float(row["waited"])))
            self._ready.append(
                ClaimedJob(
                    row["id"],
                    row["name"],
                    row["args"],
                    row["attempt"],
                    row["max_attempts"],
                    row["request_id"],
                )
            )
        self._start_ready()
        return len(rows)

    async def _run_claim(self, limit: int, done: list[int]) -> list[Record]:
        args = (self.queues, limit, self.settings.jobs_lease_seconds, self.id, done)
        if self.settings.db_pool_mode == "pgbouncer":
            # Transaction pooling keeps no session settings: set them in each transaction.
            async with self.db.acquire() as conn, self._bookkeeping(conn):
                return await conn.fetch(CLAIM, *args)
        conn = await self._claimer()
        try:
            return await conn.fetch(CLAIM, *args)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            await self._close_claimer()  # the next claim connects again
            raise

    async def _claimer(self) -> asyncpg.Connection[Record]:
        """The claim loop's own connection, with the bookkeeping settings for its session.

        One autocommit statement per claim instead of BEGIN, SET LOCAL, the claim, COMMIT
        and the pool's reset query: a quarter of a claim's time, and of the pickup latency.
        Only the claim loop uses it, one statement at a time.
        """
        if self._claim_conn is None or self._claim_conn.is_closed():
            conn = await self.db.connect_direct()
            durable = self.settings.jobs_synchronous_commit
            await conn.execute(CLAIMER_DURABLE if durable else CLAIMER_FAST)
            self._claim_conn = conn
        return self._claim_conn

    async def _close_claimer(self) -> None:
        conn, self._claim_conn = self._claim_conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)

    async def _execute(self, job: ClaimedJob) -> None:
        token = request_id_var.set(job.request_id or f"job-{job.id}")
        kind = self.registry.get(job.name)
        started = perf_counter()
        try:
            if kind is None:
                raise LookupError(f"no job named {job.name!r} is registered in this worker")
            timeout = kind.timeout or self.settings.jobs_default_timeout
            try:
                # asyncio.timeout, not wait_for: no second task per job (Python 3.11).
                async with asyncio.timeout(timeout):
                    await kind.handler(**job.args)
            except TimeoutError:
                raise TimeoutError(f"timed out after {timeout:g} s") from None
        except asyncio.CancelledError:
            # Cancelled by an operator (state is already 'cancelled') or by shutdown
            # (the lease is released by _shutdown); nothing to record here.
            if job.id in self._cancelled:
                JOBS_FINISHED.labels("cancelled").inc()
        except Exception as exc:
            await self._record_failure(job, exc)
        else:
            self._succeeded.append(job.id)
            SUCCEEDED.inc()
        finally:
            _run_seconds(job.name).observe(perf_counter() - started)
            self._running.pop(job.id, None)
            self._cancelled.discard(job.id)
            request_id_var.reset(token)
            if not self._stopping.is_set():
                self._start_ready()
            if len(self._ready) < self._low_water:
                self._wake.set()

    async def _record_failure(self, job: ClaimedJob, exc: Exception) -> None:
        base, cap = self.settings.jobs_backoff_base, self.settings.jobs_backoff_max
        delay = min(cap, base * 2 ** (job.attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not crypto
        error = f"{type(exc).__name__}: {exc}"[:2000]
        trace = "".join(traceback.format_exception(exc))[-8000:]
        async with self.db.acquire() as conn, self._bookkeeping(conn):
            state = await conn.fetchval(FAIL, job.id, self.id, delay, error, trace)
        outcome = "dead" if state == "dead" else "retried"
        JOBS_FINISHED.labels(outcome).inc()
        log.warning("job %s %s failed (attempt %d): %s", job.name, job.id, job.attempt, error)

    async def _flush(self) -> None:
        """Record every success since the last flush in one statement."""
        if not self._succeeded:
            return
        done, self._succeeded = self._succeeded, []
        try:
            async with self.db.acquire() as conn, self._bookkeeping(conn):
                await conn.execute(COMPLETE, done, self.id)
        except BaseException:
            self._succeeded[:0] = done
            raise

    @asynccontextmanager
    async def _bookkeeping(self, conn: Connection) -> AsyncIterator[None]:
        """A transaction for the worker's own writes: claims, completions, failures."""
        durable = self.settings.jobs_synchronous_commit
        async with conn.transaction():
            await conn.execute(BOOKKEEPING_DURABLE if durable else BOOKKEEPING_FAST)
            yield

    # --- upkeep --------------------------------------------------------------------------

    async def _upkeep_loop(self) -> None:
        period = self.settings.jobs_lease_seconds / 3
        while True:
            await asyncio.sleep(min(period, 1.0) if self._succeeded else period)
            try:
                await self._flush()
                await self._maintain()
            except Exception:
                # Whatever went wrong, keep going: a dead upkeep loop stops heartbeats, and
                # other workers would then re-run jobs that are running fine here.
                log.exception("jobs: upkeep failed; trying again in %.1fs", period)

    async def _maintain(self) -> None:
        await self._heartbeat()
        async with self.db.acquire() as conn:
            rescued = await conn.fetch(RESCUE)
            if rescued:
                log.warning("rescued %d jobs whose worker was lost", len(rescued))
                await conn.execute("SELECT pg_notify($1, 'rescued')", WAKE_CHANNEL)
            for row in await conn.fetch(DEPTH):
                QUEUE_DEPTH.labels(row["queue"]).set(row["n"])
        await self._schedule_periodic()

    async def _heartbeat(self) -> None:
        ids = [*self._running, *(job.id for job in self._ready)]
        if not ids:
            return
        async with self.db.acquire() as conn:
            rows = await conn.fetch(HEARTBEAT, ids, self.id, self.settings.jobs_lease_seconds)
        kept = {row["id"] for row in rows}
        for job_id in ids:
            if job_id not in kept:
                self._cancel_local(job_id)

    async def _schedule_periodic(self) -> None:
        now = datetime.now(UTC)
        for kind in self.registry:
            if kind.cron is None or kind.queue not in self.queues:
                continue
            slot = kind.cron.latest_slot(now)
            async with self.db.transaction() as conn:
                await conn.execute(SEED_SLOT, kind.name)
                if await conn.fetchval(CLAIM_SLOT, kind.name, slot) is not None:
                    await self.jobs.enqueue(
                        kind.name, {}, conn=conn, unique_key=f"periodic:{kind.name}"
                    )

    def _cancel_local(self, job_id: int) -> None:
        for waiting in [job for job in self._ready if job.id == job_id]:
            self._ready.remove(waiting)
        task = self._running.get(job_id)
        if task is not None and not task.done():
            self._cancelled.add(job_id)
            task.cancel()

    # --- wake-ups through the notifier ------------------------------------------------

    async def _listen(self) -> None:
        notifier = self.jobs.notifier
        self._unlisten = [
            await notifier.listen(WAKE_CHANNEL, self._on_wake),
            await notifier.listen(CANCEL_CHANNEL, self._on_cancel),
        ]
        # Back from a lost connection: a wake-up may have been missed, look once.
        remove_state = notifier.on_state(lambda connected: self._wake.set() if connected else None)

        async def forget_state() -> None:
            remove_state()

        self._unlisten.append(forget_state)

    def _on_wake(self, topic: str, payload: str) -> None:
        self._wake.set()

    def _on_cancel(self, topic: str, payload: str) -> None:
        if payload.isdigit():
            self._cancel_local(int(payload))

    # --- shutdown ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._running:
            tasks = list(self._running.values())
            await asyncio.wait(tasks, timeout=self.settings.jobs_shutdown_grace)
        leftover = [job_id for job_id, task in self._running.items() if not task.done()]
        leftover += [job.id for job in self._ready]  # claimed but never started
        self._ready.clear()
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        try:
            await self._flush()
            if leftover:
                async with self.db.acquire() as conn:
                    await conn.execute(RELEASE, leftover, self.id)
                    await conn.execute("SELECT pg_notify($1, 'released')", WAKE_CHANNEL)
                log.info("released %d unfinished jobs", len(leftover))
        finally:
            await self._close_claimer()
            for unlisten in self._unlisten:
                await unlisten()
            self._unlisten = []
