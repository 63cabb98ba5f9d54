"""Read replicas: which one takes a read, and which are fit to take any.

``ReplicaSet`` holds one pool per DATABASE_REPLICA_URLS entry and a background check that
runs every DATABASE_REPLICA_CHECK_INTERVAL seconds. Per replica it measures

- lag in bytes: the primary's WAL position minus the replica's replayed position;
- lag in seconds, as pghero computes it: 0 when everything received has been replayed,
  else the age of the last replayed transaction (a quiet primary is not a lagging one).

A replica that does not answer, is not in recovery, or lags past
DATABASE_REPLICA_MAX_LAG_SECONDS or DATABASE_REPLICA_MAX_LAG_BYTES leaves the rotation
until a check finds it fit again (lag must be seen by two checks in a row). Byte lag is
what catches a replica cut off from its primary: it has replayed all it received, so its
seconds read 0.

``acquire_read`` picks the next fit replica round robin. When the request carries a WAL
position (read-your-writes, ``app.db.routing``), the replica must have replayed that far:
the position recorded by the last check decides when it can; otherwise one
``pg_last_wal_replay_lsn()`` on the chosen connection does. Not far enough, no fit
replica, or a connection that cannot be had: the read goes to the primary, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.config import Settings
from app.db import routing
from app.observability.metrics import (
    DB_READ_ROUTES,
    DB_REPLICA_HEALTHY,
    DB_REPLICA_LAG_BYTES,
    DB_REPLICA_LAG_SECONDS,
)

log = logging.getLogger(__name__)

# Bounds one check of one replica (and the primary's position), so an unreachable host
# cannot stall the loop that takes it out of rotation.
CHECK_TIMEOUT_SECONDS = 2.0

PRIMARY_POSITION = "SELECT pg_current_wal_lsn()"
# One round trip per replica. pg_last_xact_replay_timestamp() is NULL until the replica
# has replayed a transaction since it started; byte lag covers that window.
REPLICA_STATE = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_replay_lsn() AS replay_lsn,
       CASE
           WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
           ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8 AS lag_seconds
"""
REPLAYED_POSITION = "SELECT pg_last_wal_replay_lsn()"
UNCHECKED = "not checked yet"

# What a failed replica connection or query raises: refused or reset sockets (OSError),
# a server starting up or shutting down (PostgresError), a closed connection, a timeout.
REPLICA_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


@dataclass(slots=True)
class Replica:
    name: str
    url: str
    pool: asyncpg.Pool
    # The check's own connection: a pool saturated by reads must not look like a dead server.
    monitor: asyncpg.Connection[asyncpg.Record] | None = None
    healthy: bool = False
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    lagging_checks: int = 0
    problem: str | None = UNCHECKED


class ReplicaSet:
    """The replicas of one ``Database``; ``start()`` runs a first check and the loop."""

    def __init__(
        self, settings: Settings, primary: asyncpg.Pool, pools: list[tuple[str, asyncpg.Pool]]
    ) -> None:
        self.settings = settings
        self.primary = primary
        self.replicas = [
            Replica(f"replica-{index}", url, pool) for index, (url, pool) in enumerate(pools)
        ]
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="replica-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self.replicas:
            if replica.monitor is not None:
                replica.monitor.terminate()
            for gauge in (DB_REPLICA_HEALTHY, DB_REPLICA_LAG_BYTES, DB_REPLICA_LAG_SECONDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(replica.name)

    # --- routing -------------------------------------------------------------------------

    async def acquire_read(self) -> tuple[asyncpg.Pool, Conn] | None:
        """A replica connection for a lag-tolerant read, or None: use the primary."""
        state = routing.current()
        if state is not None and state.primary_only:
            DB_READ_ROUTES.labels("primary", "written").inc()
            return None
        min_lsn = state.min_lsn if state is not None else None
        replica = self._pick(min_lsn)
        if replica is None:
            DB_READ_ROUTES.labels("primary", "unavailable").inc()
            return None
        try:
            # No timeout: waiting for a busy pool is not a sign of a dead server.
            conn: Conn = await replica.pool.acquire()
        except REPLICA_ERRORS as exc:
            self._mark_down(replica, exc)
            DB_READ_ROUTES.labels("primary", "error").inc()
            return None
        if min_lsn is None:
            DB_READ_ROUTES.labels("replica", "any").inc()
            return replica.pool, conn
        if replica.replay_lsn is None or replica.replay_lsn < min_lsn:
            try:
                replayed = await conn.fetchval(REPLAYED_POSITION, timeout=CHECK_TIMEOUT_SECONDS)
            except REPLICA_ERRORS as exc:
                await replica.pool.release(conn)
                self._mark_down(replica, exc)
                DB_READ_ROUTES.labels("primary", "error").inc()
                return None
            if replayed is not None:
                replica.replay_lsn = max(replica.replay_lsn or 0, replayed)
            if replayed is None or replayed < min_lsn:
                await replica.pool.release(conn)
                DB_READ_ROUTES.labels("primary", "behind").inc()
                return None
        DB_READ_ROUTES.labels("replica", "caught_up").inc()
        return replica.pool, conn

    def _pick(self, min_lsn: int | None) -> Replica | None:
        """The next fit replica; with a position, one known to have replayed it first."""
        fit = [replica for replica in self.replicas if replica.healthy]
        if not fit:
            return None
        self._next = (self._next + 1) % len(fit)
        ordered = fit[self._next :] + fit[: self._next]
        if min_lsn is not None:
            for replica in ordered:
                if replica.replay_lsn is not None and replica.replay_lsn >= min_lsn:
                    return replica
        return ordered[0]

    # --- health --------------------------------------------------------------------------

    async def check(self) -> None:
        """Measure every replica once and take it in or out of the rotation."""
        try:
            primary_lsn: int | None = await self.primary.fetchval(
                PRIMARY_POSITION, timeout=CHECK_TIMEOUT_SECONDS
            )
        except REPLICA_ERRORS:
            primary_lsn = None  # byte lag unknown this round; seconds still count
        await asyncio.gather(*(self._check(replica, primary_lsn) for replica in self.replicas))

    async def _check(self, replica: Replica, primary_lsn: int | None) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                if replica.monitor is None or replica.monitor.is_closed():
                    replica.monitor = await asyncpg.connect(
                        replica.url,
                        statement_cache_size=0,
                        server_settings={"application_name": "pgfirst-replica-check"},
                    )
                row = await replica.monitor.fetchrow(REPLICA_STATE)
        except REPLICA_ERRORS as exc:
            if replica.monitor is not None:
                replica.monitor.terminate()
                replica.monitor = None
            self._mark_down(replica, exc)
            return
        assert row is not None
        replica.replay_lsn = row["replay_lsn"]
        replica.lag_seconds = row["lag_seconds"]
        replica.lag_bytes = (
            max(0, primary_lsn - row["replay_lsn"])
            if primary_lsn is not None and row["replay_lsn"] is not None
            else None
        )
        DB_REPLICA_LAG_SECONDS.labels(replica.name).set(replica.lag_seconds or 0.0)
        if replica.lag_bytes is not None:
            DB_REPLICA_LAG_BYTES.labels(replica.name).set(replica.lag_bytes)
        settings = self.settings
        lagging: str | None = None
        if replica.lag_seconds is not None and (
            replica.lag_seconds > settings.database_replica_max_lag_seconds
        ):
            lagging = f"{replica.lag_seconds:.1f} s behind"
        elif replica.lag_bytes is not None and (
            replica.lag_bytes > settings.database_replica_max_lag_bytes
        ):
            lagging = f"{replica.lag_bytes} bytes behind"
        # The first commit after a quiet spell reads, until it is applied a few ms later, as
        # lag the length of the spell: only lag seen by two checks in a row counts.
        replica.lagging_checks = replica.lagging_checks + 1 if lagging else 0
        if not row["in_recovery"]:
            self._set_health(replica, "not in recovery (promoted, or not a replica)")
        elif lagging and (replica.lagging_checks >= 2 or not replica.healthy):
            self._set_health(replica, lagging)
        elif not lagging:
            self._set_health(replica, None)

    def _mark_down(self, replica: Replica, exc: BaseException) -> None:
        self._set_health(replica, f"unreachable: {type(exc).__name__}: {exc}")

    def _set_health(self, replica: Replica, problem: str | None) -> None:
        healthy = problem is None
        if healthy != replica.healthy:
            if healthy and replica.problem == UNCHECKED:
                pass  # the first check: nothing came back
            elif healthy:
                log.info("replica %s takes reads again", replica.name)
            else:
                log.warning("replica %s leaves the rotation: %s", replica.name, problem)
        replica.healthy, replica.problem = healthy, problem
        DB_REPLICA_HEALTHY.labels(replica.name).set(1 if healthy else 0)

    async def _run(self) -> None:
        interval = self.settings.database_replica_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                log.exception("replica check failed")
