"""A leader lease: one named role held by at most one process at a time, in Postgres.

A row of ``maintenance_leases`` (name, holder, expires_at) per role. ``claim()`` takes the
row when it is free or its lease ran out, or renews it when it is already this holder's —
one upsert, in one short transaction, so it works behind PgBouncer in transaction mode
(no session advisory lock to lose with the connection). A holder that dies stops renewing
and is replaced once ``expires_at`` passes; ``give_up()`` hands over at once.

Two holders can overlap only when one stalls past its lease without noticing (a frozen
process, a long GC pause): whatever runs under a lease must stay safe to run twice at once.
"""

from __future__ import annotations

import logging

from app.db import Database
from app.jobs.sql import GIVE_UP_LEASE, TAKE_LEASE

log = logging.getLogger(__name__)


class LeaderLease:
    """The lease on role ``name`` for ``holder``, ``seconds`` long from each claim."""

    def __init__(self, db: Database, name: str, holder: str, seconds: float) -> None:
        self.db = db
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.held = False

    async def claim(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; True if we hold it.

        Call it more often than ``seconds`` (a third of it leaves two tries to spare). On an
        error the lease counts as lost: the caller cannot know it still holds it.
        """
        was_held, self.held = self.held, False
        async with self.db.acquire() as conn:
            self.held = (
                await conn.fetchval(TAKE_LEASE, self.name, self.holder, self.seconds) is not None
            )
        if self.held and not was_held:
            log.info("%s leads %s maintenance", self.holder, self.name)
        elif was_held and not self.held:
            log.warning("%s lost the %s lease to another process", self.holder, self.name)
        return self.held

    async def give_up(self) -> None:
        """Delete our row so the next claimer takes over now, not when the lease ends."""
        if not self.held:
            return
        self.held = False
        async with self.db.acquire() as conn:
            await conn.execute(GIVE_UP_LEASE, self.name, self.holder)
        log.info("%s handed over %s maintenance", self.holder, self.name)
