"""The worker: claim in batches, run with bounded concurrency, finish in batches.

Loop: claim ahead of the free slots (``FOR UPDATE SKIP LOCKED``, so workers never wait on
each other and never get the same job) as many jobs as the slots finish during a claim,
twice over (``claim_plan``: up to two batches for quick jobs, ``concurrency`` for slow
ones), run them on ``concurrency`` slots (``runner.py``), and record the successes in the
next claim statement — one statement and one commit per batch for both ends, because
transactions per job are what bound a queue's throughput (docs/jobs.md). The worker's
bookkeeping pins the claim's plan (no sort, no sequential scan) and does not wait for the
WAL flush (JOBS_SYNCHRONOUS_COMMIT): a lost claim or completion re-runs a job, it never
loses one. With nothing to claim the worker sleeps until a wake-up on ``pgfirst_jobs``
through the process's notifier (sent when a job is committed) or the poll interval,
whichever comes first; without LISTEN (``DB_POOL_MODE=pgbouncer``, or a lost listener)
polling alone keeps it going. The worker's statements are in ``bookkeeping.py``, the SQL
and why it is shaped so in ``sql.py``.

Beside the claim loop run two tasks the worker owns: its upkeep (every lease/3 seconds it
extends the leases of its own running jobs — a job cancelled meanwhile is not extended and
its slot is interrupted — and, every second while there are any, records pending
successes), and its ``Maintenance``, which
competes for the leader lease and, while leading, rescues expired leases, samples queue
depth and schedules periodic jobs (``maintenance.py``). Both log every failure and go on.

A burst worker (``burst=True``) runs one maintenance round first — as leader if the lease
is free, so a lone ``app worker --burst`` runs the periodic jobs that are due — then
returns once nothing is left. Shutdown is two-step: stop claiming, hand over the lease,
give running jobs JOBS_SHUTDOWN_GRACE seconds, then cancel them and release their leases
so another worker takes them at once, without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import traceback
import uuid
from time import perf_counter

import asyncpg

from app.jobs.bookkeeping import CONNECTION_LOST, Bookkeeper
from app.jobs.maintenance import Clock, Maintenance
from app.jobs.metrics import JOB_METRICS
from app.jobs.queue import CANCEL_CHANNEL, WAKE_CHANNEL, Jobs
from app.jobs.runner import ClaimedJob, JobRunner
from app.notifier import Unlisten

log = logging.getLogger(__name__)
# What a lost or restarting database raises; a claim loop survives these.
CLAIM_ERRORS = (*CONNECTION_LOST, TimeoutError, asyncpg.PostgresError)


class Worker:
    """Runs the jobs of ``queues`` (default: every queue its registry knows).

    ``rng`` draws the backoff jitter and ``clock`` the time periodic slots are due at; both
    default to the real thing and exist so that tests can pin them.
    """

    def __init__(
        self,
        jobs: Jobs,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.jobs = jobs
        self.settings = settings = jobs.settings
        self.registry = jobs.registry
        self.queues = queues or self.registry.queues()
        self.concurrency = concurrency or settings.jobs_concurrency
        self.burst = burst
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.maintenance = Maintenance(jobs, self.id, clock=clock)
        self.bookkeeper = Bookkeeper(jobs.db, settings, self.id)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._wake = asyncio.Event()
        self.claim_seconds = 0.0  # a moving average of a claim's round trip
        self.runner = JobRunner(
            self.registry,
            settings,
            JOB_METRICS,
            concurrency=self.concurrency,
            low_water=self.concurrency,
            on_failure=self._record_failure,
            on_low=self._wake.set,
        )
        self._stopping = asyncio.Event()
        self._unlisten: list[Unlisten] = []

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
            extra={
                "worker": self.id,
                "queues": self.queues,
                "concurrency": self.concurrency,
                "burst": self.burst,
                "job_kinds": kinds,
            },
        )
        await self._listen()
        await self.maintenance.round()
        helpers = [
            asyncio.create_task(self._upkeep_loop(), name="jobs-upkeep"),
            asyncio.create_task(self.maintenance.run(), name="jobs-maintenance"),
        ]
        try:
            await self._claim_loop()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.maintenance.release()
            await self._shutdown()
            log.info("worker %s stopped", self.id, extra={"worker": self.id})

    def stop(self) -> None:
        """Step one of shutdown: stop claiming. ``run()`` then finishes the rest."""
        self._stopping.set()
        self._wake.set()

    # --- claiming and running ------------------------------------------------------------

    def claim_plan(self) -> tuple[int, int]:
        """How many jobs to keep leased ahead of the slots, and how many to claim at once.

        Little's law: while a claim is on its way, the slots finish about claim time ×
        concurrency / run time jobs; with twice that many waiting they never idle on a
        claim. Quick jobs therefore keep up to two batches (JOBS_CLAIM_BATCH) ahead — the
        next claim is sent as soon as one returns and runs on the server while these run
        here — and slow ones only ``concurrency``, claimed that many at a time, which
        leaves the rest of the queue to other workers. Before any job has run: slow.
        """
        batch = self.settings.jobs_claim_batch
        smallest = min(self.concurrency, batch)
        run = self.runner.mean_run_seconds
        if run == 0.0:
            return self.concurrency, smallest
        wanted = math.ceil(2 * self.claim_seconds * self.concurrency / run)
        ahead = max(self.concurrency, min(2 * batch, wanted))
        return ahead, max(smallest, min(batch, ahead))

    async def _claim_loop(self) -> None:
        interval = self.settings.jobs_poll_interval
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            claimed = 0
            tried = False
            try:
                ahead, size = self.claim_plan()
                self.runner.low_water = ahead  # the slots wake this loop below it
                if len(self.runner.ready) < ahead:
                    tried = True
                    claimed = await self._claim(size)
                self.runner.start()
                # Successes ride on the next claim; on their own only when the worker is
                # idle (and at least every second, by the upkeep loop).
                if not self.runner.busy():
                    await self._flush()
            except CLAIM_ERRORS as exc:
                # The database went away (restart, failover, network): keep running the
                # jobs in hand and try again with backoff instead of dying.
                failures += 1
                if self.burst and failures >= 5:
                    raise
                delay = min(5.0, 0.1 * 2**failures)
                log.warning("jobs: claim failed (%r); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                continue
            failures = 0
            if claimed and len(self.runner.ready) < self.runner.low_water:
                continue
            if not self.runner.busy():
                if not tried:
                    continue  # drained while flushing: look for more before sleeping
                if self.burst:
                    return
            # Woken by a NOTIFY, by stop(), or by a finished job once the claimed-ahead
            # jobs run low (not by every finished job: that is a loop turn per job).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def _claim(self, limit: int) -> int:
        """Record successes, lease up to ``limit`` jobs, queue them in order, start what fits.

        Returns how many were claimed.
        """
        runner = self.runner
        done, runner.succeeded = runner.succeeded, []
        started = perf_counter()
        try:
            rows = await self.bookkeeper.claim(self.queues, limit, done)
        except BaseException:
            runner.succeeded[:0] = done  # recorded by the next try (a repeat is a no-op)
            raise
        self.claim_seconds += 0.2 * (perf_counter() - started - self.claim_seconds)
        # Handed over as rows: the slots make jobs of them while the next claim is out.
        runner.add(rows)
        return len(rows)

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying after failed ``attempt``: JOBS_BACKOFF_BASE doubling per
        attempt up to JOBS_BACKOFF_MAX, jittered between half and all of it so that the
        retries of a burst of failures spread out."""
        base, cap = self.settings.jobs_backoff_base, self.settings.jobs_backoff_max
        delay = min(cap, base * 2.0 ** (attempt - 1))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _record_failure(self, job: ClaimedJob, exc: Exception) -> None:
        delay = self.backoff(job.attempt)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        trace = "".join(traceback.format_exception(exc))[-8000:]
        state = await self.bookkeeper.fail(job.id, delay, error, trace)
        JOB_METRICS.finished("dead" if state == "dead" else "retried")
        log.warning("job %s %s failed (attempt %d): %s", job.name, job.id, job.attempt, error)

    async def _flush(self) -> None:
        """Record every success since the last flush, and count every one not yet counted,
        in one statement."""
        runner = self.runner
        if not runner.succeeded and not self.bookkeeper.uncounted:
            return
        done, runner.succeeded = runner.succeeded, []
        try:
            await self.bookkeeper.complete(done)
        except BaseException:
            runner.succeeded[:0] = done
            raise

    # --- upkeep of this worker's own jobs ------------------------------------------------

    async def _upkeep_loop(self) -> None:
        period = self.settings.jobs_lease_seconds / 3
        while True:
            await asyncio.sleep(min(period, 1.0) if self.runner.succeeded else period)
            try:
                await self._flush()
                await self._heartbeat()
            except Exception:
                # Whatever went wrong, keep going: a dead upkeep loop stops heartbeats, and
                # the leader would then rescue jobs that are running fine here.
                log.exception("jobs: upkeep failed; trying again in %.1fs", period)

    async def _heartbeat(self) -> None:
        ids = [*self.runner.running_ids(), *self.runner.waiting_ids()]
        if not ids:
            return
        kept = await self.bookkeeper.heartbeat(ids)
        for job_id in ids:
            if job_id not in kept:
                self.runner.cancel(job_id)

    # --- wake-ups through the notifier ---------------------------------------------------

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
            self.runner.cancel(int(payload))

    # --- shutdown ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        leftover = await self.runner.stop(self.settings.jobs_shutdown_grace)
        try:
            await self._flush()
            if leftover:
                await self.bookkeeper.release(leftover)
                log.info("released %d unfinished jobs", len(leftover))
        finally:
            await self.bookkeeper.close()
            for unlisten in self._unlisten:
                await unlisten()
            self._unlisten = []
