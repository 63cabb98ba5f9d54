"""Partition maintenance for activity_logs, without pg_partman.

``maintain()`` is idempotent and safe to run from any number of instances at once. In
order it

1. makes the partitions for the current period and PREMAKE periods ahead,
2. moves rows that landed in the DEFAULT partition into proper partitions (rows of a
   period with no partition yet get one, when within retention; expired ones are deleted;
   rows too far in the future stay and are reported — the "default partition not empty"
   signal),
3. retires partitions whose whole range is older than the retention: DETACH, then DROP.

It keeps no session state, so it runs unchanged behind PgBouncer in transaction mode
(``DB_POOL_MODE=pgbouncer``), where consecutive transactions of one client may run on
different server connections and a session's SETs and locks would stay behind on a server
connection another client gets next. Every step is one short transaction that first takes
a transaction-scoped advisory lock with try semantics (``pg_try_advisory_xact_lock``) and
sets ``lock_timeout`` for itself only (``set_config(..., true)``, i.e. SET LOCAL); COMMIT
or ROLLBACK releases both. A run that finds the lock taken on its first step returns
``ran=False`` at once; one that loses it later stops there, since the holder is in the
middle of its own full pass. Each step re-reads the catalog under the lock, so steps of
two runs may interleave but never repeat or undo each other's work.

Every partition is created as a plain table and ATTACHed, in one transaction with the rows
it takes over from DEFAULT. ATTACH takes SHARE UPDATE EXCLUSIVE on the parent, which
blocks neither reads nor writes (CREATE TABLE ... PARTITION OF would take ACCESS
EXCLUSIVE). Retiring uses a plain DETACH: PostgreSQL refuses DETACH ... CONCURRENTLY on a
table with a DEFAULT partition. Its ACCESS EXCLUSIVE lock on the parent lasts a catalog
update (milliseconds), and ``lock_timeout`` makes it give up — and retry on the next run —
rather than queue behind a long query and stall every write behind it. Locks taken by
ATTACH and DETACH last until COMMIT, which is why the pass is not one transaction: one
partition's DETACH would then block every write until the whole pass had finished.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from app.db import Connection, Database

log = logging.getLogger(__name__)

Interval = Literal["day", "week", "month"]
PARENT = "activity_logs"
DEFAULT_PARTITION = "activity_logs_default"
MAINTENANCE_LOCK_KEY = 0x61637469766974  # "activit"

# Bounds are read back from the catalog ("FOR VALUES FROM ('...') TO ('...')"), so
# retention works whatever the naming or the interval was when a partition was made.
LIST_PARTITIONS = """
SELECT c.relname AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz
           AS lower_bound,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
           AS upper_bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'activity_logs'::regclass
"""
# Both end with the step's transaction, so nothing outlives it on a pooled server
# connection (see the module docstring).
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
DEFAULT_PERIODS = """
SELECT DISTINCT date_trunc($1, created_at AT TIME ZONE 'UTC') AS period
FROM activity_logs_default
"""


@dataclass
class MaintenanceReport:
    ran: bool = True
    created: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    moved_rows: int = 0
    deleted_rows: int = 0
    default_rows_left: int = 0
    skipped: list[str] = field(default_factory=list)


def period_start(moment: datetime, interval: Interval) -> datetime:
    moment = moment.astimezone(UTC)
    if interval == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day


def shift(start: datetime, interval: Interval, periods: int) -> datetime:
    if interval == "month":
        month_index = start.year * 12 + start.month - 1 + periods
        return start.replace(year=month_index // 12, month=month_index % 12 + 1)
    return start + timedelta(days=periods * (7 if interval == "week" else 1))


def partition_name(start: datetime) -> str:
    return f"{PARENT}_p{start:%Y%m%d}"


async def maintain(
    db: Database,
    *,
    interval: Interval,
    premake: int,
    retention: int,
    now: datetime | None = None,
    lock_timeout_ms: int = 2_000,
) -> MaintenanceReport:
    """Run one maintenance pass; see the module docstring.

    ``ran`` is False when another run held the lock at this run's first step (nothing was
    done). A run that loses the lock later returns what it did up to then.
    """
    now = now or datetime.now(UTC)
    current = period_start(now, interval)
    oldest_kept = shift(current, interval, -retention)
    report = MaintenanceReport()
    try:
        await _ensure_partition(db, current, interval, report, lock_timeout_ms)
    except _LockTaken:
        return MaintenanceReport(ran=False)
    try:
        for offset in range(1, premake + 1):
            start = shift(current, interval, offset)
            await _ensure_partition(db, start, interval, report, lock_timeout_ms)
        horizon = shift(current, interval, premake + 1)
        await _drain_default(db, interval, oldest_kept, horizon, report, lock_timeout_ms)
        await _retire(db, oldest_kept, report, lock_timeout_ms)
    except _LockTaken:
        log.info("activity: another run took the maintenance lock; it finishes the pass")
    async with db.acquire() as conn:
        report.default_rows_left = await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}")
    return report


class _LockTaken(Exception):
    """Another run holds the maintenance lock."""


@asynccontextmanager
async def _step(db: Database, lock_timeout_ms: int) -> AsyncIterator[Connection]:
    """One transaction holding the maintenance lock; raises _LockTaken instead of waiting."""
    async with db.transaction() as conn:
        if not await conn.fetchval(TRY_LOCK, MAINTENANCE_LOCK_KEY):
            raise _LockTaken
        await conn.execute(SET_LOCK_TIMEOUT, f"{int(lock_timeout_ms)}ms")
        yield conn


async def _existing(conn: Connection) -> dict[str, tuple[datetime, datetime] | None]:
    """Partition name -> (lower, upper) bounds; None for the DEFAULT partition."""
    return {
        row["name"]: (row["lower_bound"], row["upper_bound"]) if row["lower_bound"] else None
        for row in await conn.fetch(LIST_PARTITIONS)
    }


async def _ensure_partition(
    db: Database,
    start: datetime,
    interval: Interval,
    report: MaintenanceReport,
    lock_timeout_ms: int,
) -> None:
    name = partition_name(start)
    end = shift(start, interval, 1)
    # Identifiers and literals below are built from dates, never from input.
    try:
        async with _step(db, lock_timeout_ms) as conn:
            for bounds in (await _existing(conn)).values():
                if bounds is not None and bounds[0] < end and start < bounds[1]:
                    return  # covered (also by a partition made under another interval)
            # Standalone table + ATTACH: SHARE UPDATE EXCLUSIVE on the parent, not ACCESS
            # EXCLUSIVE. The CHECK lets ATTACH skip scanning the new table; rows that wait
            # in DEFAULT for this range move over in the same transaction.
            await conn.execute(
                f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            await conn.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_range "
                f"CHECK (created_at >= '{start.isoformat()}' AND created_at < '{end.isoformat()}')"
            )
            moved = await conn.execute(
                f"""
                WITH moved AS (
                    DELETE FROM {DEFAULT_PARTITION}
                    WHERE created_at >= $1 AND created_at < $2
                    RETURNING *
                )
                INSERT INTO {name} SELECT * FROM moved
                """,
                start,
                end,
            )
            await conn.execute(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
        report.created.append(name)
        report.moved_rows += int(moved.split()[-1])
    except asyncpg.LockNotAvailableError:
        report.skipped.append(name)
        log.warning("activity: lock_timeout creating %s; will retry next run", name)


async def _drain_default(
    db: Database,
    interval: Interval,
    oldest_kept: datetime,
    horizon: datetime,
    report: MaintenanceReport,
    lock_timeout_ms: int,
) -> None:
    async with _step(db, lock_timeout_ms) as conn:
        expired = await conn.execute(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE created_at < $1", oldest_kept
        )
        periods = await conn.fetch(DEFAULT_PERIODS, interval)
    report.deleted_rows += int(expired.split()[-1])
    for row in periods:
        start = row["period"].replace(tzinfo=UTC)  # date_trunc('week') is a Monday, like ours
        if oldest_kept <= start < horizon:
            await _ensure_partition(db, start, interval, report, lock_timeout_ms)


async def _retire(
    db: Database, oldest_kept: datetime, report: MaintenanceReport, lock_timeout_ms: int
) -> None:
    async with db.acquire() as conn:
        partitions = await _existing(conn)
    expired = sorted(
        name for name, bounds in partitions.items() if bounds and bounds[1] <= oldest_kept
    )
    for name in expired:
        try:
            # DETACH and DROP in one transaction: a partition is never left detached but
            # not dropped (the catalog would no longer list it for a later run to retry).
            async with _step(db, lock_timeout_ms) as conn:
                if name not in await _existing(conn):
                    continue  # another run retired it between our steps
                await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
        except asyncpg.LockNotAvailableError:
            report.skipped.append(name)
            log.warning("activity: lock_timeout detaching %s; will retry next run", name)
            continue
        report.retired.append(name)
