"""Queue maintenance by one elected leader: rescue, queue sampling, periodic scheduling.

Every worker process runs a ``Maintenance`` beside its claim loop, and every round (a third
of JOBS_LEASE_SECONDS) each one tries to take or renew the ``jobs`` lease (``leader.py``).
The one that holds it runs the steps; the others only keep trying, so a leader that dies is
replaced once its lease passes, and one that stops gracefully hands over at once. Heartbeats
of running jobs are not maintenance: each worker extends its own leases (``worker.py``).

Steps, each safe to run twice at once (two leaders can overlap while one stalls):

- ``rescue_expired``: jobs whose lease ran out (their worker was killed or lost) become
  available again, or dead after their last attempt; ``SKIP LOCKED`` leaves alone a job
  its slow worker is finishing right now.
- ``sample_queues``: the ``jobs_available`` gauge, by queue (only the leader reports it).
- ``schedule_periodic``: for every ``@job(cron=...)`` the leader's registry knows, the
  latest slot is claimed in ``job_schedule`` and the job enqueued in the same transaction,
  so each slot runs once across every instance and restart. Name job modules in
  JOBS_MODULES so that every process, whichever leads, knows every periodic job.

Pruning of finished jobs is not a step: it stays the periodic job ``pgfirst.prune_jobs``.
A delete of millions of rows can outlast a round, and as a job it runs on a worker slot
under a timeout, with retries, visible in /ops/jobs — while the leader's rounds, which
renew the lease, stay short.

A failing step is logged with its traceback and the round goes on to the next step; the
next round runs them all again. Nothing but cancellation stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from app.jobs.leader import LeaderLease
from app.jobs.metrics import QUEUE_DEPTH
from app.jobs.queue import WAKE_CHANNEL, Jobs
from app.jobs.sql import CLAIM_SLOT, DEPTH, RESCUE, SEED_SLOT, WAKE

log = logging.getLogger(__name__)

LEASE_NAME = "jobs"
Step = Callable[[], Awaitable[None]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Maintenance:
    """The maintenance of one worker process: leads it when elected, else waits its turn.

    ``clock`` gives the time periodic slots are computed for (the server's clock decides
    leases and lease expiry; this one only which cron slot is due).
    """

    def __init__(self, jobs: Jobs, holder: str, *, clock: Clock | None = None) -> None:
        self.jobs = jobs
        self.db = jobs.db
        lease_seconds = jobs.settings.jobs_lease_seconds
        self.period = lease_seconds / 3
        self.lease = LeaderLease(jobs.db, LEASE_NAME, holder, lease_seconds)
        self.clock = clock or utc_now
        self.steps: list[Step] = [self.rescue_expired, self.sample_queues, self.schedule_periodic]
        self.rounds = 0
        self._sampled: set[str] = set()

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    async def run(self) -> None:
        """A round every period until cancelled (the caller runs the first one itself)."""
        while True:
            await asyncio.sleep(self.period)
            await self.round()

    async def round(self) -> bool:
        """Take or renew the lease and, as leader, run every step; True when leading.

        Never raises but ``CancelledError``: every failure is logged and left to the next
        round.
        """
        try:
            leading = await self.lease.claim()
        except Exception:
            log.exception("jobs maintenance: the leader lease could not be taken or renewed")
            leading = False
        if leading:
            for step in self.steps:
                try:
                    await step()
                except Exception:
                    name = getattr(step, "__name__", repr(step))
                    log.exception("jobs maintenance: %s failed; the next round runs it again", name)
        else:
            self._forget_samples()
        self.rounds += 1
        return leading

    async def release(self) -> None:
        """Hand the lease over (graceful stop); a failure only delays the handover."""
        self._forget_samples()
        try:
            await self.lease.give_up()
        except Exception:
            log.exception("jobs maintenance: the lease could not be handed over; it expires")

    # --- steps -----------------------------------------------------------------------------

    async def rescue_expired(self) -> None:
        async with self.db.acquire() as conn:
            rescued = await conn.fetch(RESCUE)
            if rescued:
                log.warning("rescued %d jobs whose worker was lost", len(rescued))
                await conn.execute(WAKE, WAKE_CHANNEL, "rescued")

    async def sample_queues(self) -> None:
        async with self.db.acquire() as conn:
            depth = {row["queue"]: int(row["n"]) for row in await conn.fetch(DEPTH)}
        # A queue that emptied has no row: report it as 0, not as its last depth.
        for queue in self._sampled - depth.keys():
            QUEUE_DEPTH.labels(queue).set(0)
        for queue, count in depth.items():
            QUEUE_DEPTH.labels(queue).set(count)
        self._sampled |= depth.keys()

    async def schedule_periodic(self) -> None:
        now = self.clock()
        for kind in self.jobs.registry:
            if kind.cron is None:
                continue
            slot = kind.cron.latest_slot(now)
            async with self.db.transaction() as conn:
                await conn.execute(SEED_SLOT, kind.name)
                if await conn.fetchval(CLAIM_SLOT, kind.name, slot) is not None:
                    await self.jobs.enqueue(
                        kind.name, {}, conn=conn, unique_key=f"periodic:{kind.name}"
                    )

    def _forget_samples(self) -> None:
        """Not leading: stop reporting a depth that the leader now reports."""
        for queue in self._sampled:
            with contextlib.suppress(KeyError):  # another instance in this process did
                QUEUE_DEPTH.remove(queue)
        self._sampled.clear()
