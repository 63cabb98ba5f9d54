"""Running claimed jobs: a fixed set of slots, one watchdog, metrics counted per batch.

A worker's cost per job is Python's, not the database's (one claim statement serves a
hundred jobs), so this module keeps the per-job path short:

- **Slots, not a task per job.** Up to ``concurrency`` slot coroutines each take the next
  claimed job and await its handler, then the next: no task, context copy and weak
  reference per job. Cancelling one job (an operator's ``app jobs cancel``, a timeout)
  cancels the slot while it runs that job; the slot catches it, records the outcome,
  ``uncancel()``\\ s itself and goes on with the next job.
- **One watchdog for every timeout.** A job's deadline is a float set when it starts; one
  task sleeps until the earliest deadline and cancels the slots whose job is past it
  (``asyncio.timeout`` per job would be an object and a timer handle each).
- **Rows in, jobs made by the slots.** The worker queues the claimed rows as they came
  (``add``); a slot turns a row into its ``ClaimedJob`` when it takes it, so that work
  runs while the worker's next claim is on the server rather than between claims.
- **Metrics counted locally**, handed to Prometheus by ``metrics.py`` per batch.

Semantics are those of the worker (docs/jobs.md): a job is a success when its handler
returns, a failure when it raises (retried with backoff until ``max_attempts``), timed
out after its kind's timeout or JOBS_DEFAULT_TIMEOUT, and the request id it was enqueued
under is the one its logs carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from time import monotonic, perf_counter
from typing import Any

from app.config import Settings
from app.db import Record
from app.jobs.metrics import JobMetrics
from app.jobs.registry import JobRegistry
from app.observability.logging import request_id_var

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    name: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    request_id: str | None

    @classmethod
    def from_row(cls, row: Record) -> ClaimedJob:
        """The job of a row the claim returned."""
        return cls(
            row["id"],
            row["name"],
            row["args"],
            row["attempt"],
            row["max_attempts"],
            row["request_id"],
        )


def _claim_order(row: Record) -> tuple[int, datetime, int]:
    # The claim's ORDER BY; its RETURNING comes back in primary-key order instead.
    return (-row["priority"], row["run_at"], row["id"])


class _Slot:
    __slots__ = ("deadline", "job", "outcome", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.job: ClaimedJob | None = None
        self.deadline = math.inf
        self.outcome: str | None = None  # why the running job was cancelled


class JobRunner:
    """Runs the jobs put in ``ready`` on up to ``concurrency`` slots.

    ``on_failure(job, exc)`` records a failed attempt; ``on_low()`` is called when fewer
    than ``low_water`` claimed jobs wait, so that the worker claims more.
    """

    def __init__(
        self,
        registry: JobRegistry,
        settings: Settings,
        metrics: JobMetrics,
        *,
        concurrency: int,
        low_water: int,
        on_failure: Callable[[ClaimedJob, Exception], Awaitable[None]],
        on_low: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.default_timeout = settings.jobs_default_timeout
        self.metrics = metrics
        self.concurrency = concurrency
        self.low_water = low_water
        self.on_failure = on_failure
        self.on_low = on_low
        # Claimed (leased) and not started yet: the rows as the claim returned them. A slot
        # turns a row into its job when it takes it, while the next claim is on its way.
        self.ready: deque[Record] = deque()
        # A moving average of how long a job runs, 0.0 until one has: the worker sizes its
        # claims from it (``Worker.claim_plan``).
        self.mean_run_seconds = 0.0
        self.succeeded: list[int] = []
        self.stopping = False
        self._slots: list[_Slot] = []
        self._active = 0  # slots running a job
        self._watchdog: asyncio.Task[None] | None = None
        self._rearm = asyncio.Event()
        self._watch_until = math.inf

    # --- state the worker reads --------------------------------------------------------

    def busy(self) -> bool:
        return bool(self._active or self.ready)

    def running_ids(self) -> list[int]:
        return [slot.job.id for slot in self._slots if slot.job is not None]

    def waiting_ids(self) -> list[int]:
        return [row["id"] for row in self.ready]

    def add(self, rows: list[Record]) -> None:
        """Queue claimed rows in claim order behind those already waiting, start what fits."""
        self.ready.extend(sorted(rows, key=_claim_order))
        self.start()

    def start(self) -> None:
        """Give waiting jobs a slot, up to ``concurrency`` slots."""
        if self.stopping:
            return
        idle = len(self._slots) - self._active
        wanted = min(len(self.ready), self.concurrency - self._active) - idle
        for _ in range(wanted):
            slot = _Slot()
            self._slots.append(slot)
            slot.task = asyncio.get_running_loop().create_task(self._serve(slot), name="job-slot")
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(), name="jobs-watchdog"
            )

    def cancel(self, job_id: int) -> None:
        """Cancel one job: dropped if it waits, its slot interrupted if it runs."""
        for waiting in [row for row in self.ready if row["id"] == job_id]:
            self.ready.remove(waiting)
        for slot in self._slots:
            if slot.job is not None and slot.job.id == job_id and slot.outcome is None:
                self._interrupt(slot, "cancelled")

    # --- the slots -----------------------------------------------------------------------

    async def _serve(self, slot: _Slot) -> None:
        task = slot.task
        assert task is not None
        try:
            observe_wait = self.metrics.wait.observe
            while self.ready and not self.stopping:
                row = self.ready.popleft()
                observe_wait(max(0.0, float(row["waited"])))
                await self._run(slot, task, ClaimedJob.from_row(row))
                if len(self.ready) < self.low_water:
                    self.on_low()
        finally:
            self._slots.remove(slot)

    async def _run(self, slot: _Slot, task: asyncio.Task[None], job: ClaimedJob) -> None:
        kind = self.registry.get(job.name)
        timeout = (kind.timeout if kind is not None else None) or self.default_timeout
        slot.job = job
        slot.deadline = deadline = monotonic() + timeout
        if deadline < self._watch_until:
            self._rearm.set()
        self._active += 1
        token = request_id_var.set(job.request_id or f"job-{job.id}")
        started = perf_counter()
        try:
            if kind is None:
                raise LookupError(f"no job named {job.name!r} is registered in this worker")
            await kind.handler(**job.args)
        except asyncio.CancelledError:
            outcome, slot.outcome = slot.outcome, None
            if outcome is None:
                raise  # shutdown: the worker releases the lease
            task.uncancel()
            if outcome == "timeout":
                await self._fail(job, TimeoutError(f"timed out after {timeout:g} s"))
            else:
                self.metrics.finished("cancelled")
        except Exception as exc:
            await self._fail(job, exc)
        else:
            self.succeeded.append(job.id)
            self.metrics.succeeded += 1
        finally:
            took = perf_counter() - started
            self.metrics.ran(job.name, took)
            mean = self.mean_run_seconds
            self.mean_run_seconds = took if mean == 0.0 else mean + 0.1 * (took - mean)
            request_id_var.reset(token)
            slot.job = None
            slot.deadline = math.inf
            self._active -= 1

    async def _fail(self, job: ClaimedJob, exc: Exception) -> None:
        try:
            await self.on_failure(job, exc)
        except Exception:
            # The database is away: the lease runs out and the job is retried then.
            log.exception("jobs: the failure of job %s could not be recorded", job.id)

    def _interrupt(self, slot: _Slot, outcome: str) -> None:
        if slot.task is not None and not slot.task.done():
            slot.outcome = outcome
            slot.task.cancel()

    # --- timeouts ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Sleep until the earliest deadline, interrupt what is past it, repeat."""
        while True:
            now = monotonic()
            earliest = math.inf
            for slot in self._slots:
                if slot.job is None or slot.outcome is not None:
                    continue
                if slot.deadline <= now:
                    self._interrupt(slot, "timeout")
                else:
                    earliest = min(earliest, slot.deadline)
            self._watch_until = earliest
            self._rearm.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if earliest == math.inf else earliest - now):
                    await self._rearm.wait()

    # --- shutdown ------------------------------------------------------------------------

    async def stop(self, grace: float) -> list[int]:
        """Start nothing more, give running jobs ``grace`` seconds, then cancel them.

        Returns the ids of the jobs that did not finish (running or never started).
        """
        self.stopping = True
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        leftover = self.running_ids() + self.waiting_ids()
        self.ready.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        return leftover
