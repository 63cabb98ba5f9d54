"""Partition maintenance keeps no session state, so it is safe behind PgBouncer.

In transaction mode PgBouncer hands each transaction of a client to whichever server
connection is free: a session-level lock or SET would stay behind on a connection another
client gets next. These tests look at what maintenance leaves on the one connection of a
pool of size 1, at what it sends over that connection, and at how it behaves while another
session holds its lock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery

from app.activity.partitions import MAINTENANCE_LOCK_KEY, MaintenanceReport, maintain
from app.config import Settings
from app.db import Database

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SESSION_SCOPED = re.compile(
    r"pg_(try_)?advisory_lock(_shared)?\s*\(|^\s*(SET|RESET)\s+(?!LOCAL\b)|set_config\([^)]*false",
    re.IGNORECASE,
)
LOCKING_OR_SETTING = re.compile(r"advisory|lock_timeout|set_config|^\s*SET\b", re.IGNORECASE)


@pytest.fixture
async def single_connection_db(make_settings: Callable[..., Settings]) -> AsyncIterator[Database]:
    """A Database whose pool holds exactly one connection: every step runs on it."""
    settings = make_settings(db_pool_min=1, db_pool_max=1)
    database = await Database.connect(settings, settings.database_url)
    yield database
    await database.close()


async def run_maintenance(db: Database) -> MaintenanceReport:
    return await maintain(db, interval="month", premake=2, retention=3, now=NOW)


async def advisory_locks(observer: asyncpg.Connection, pid: int) -> int:
    count: int = await observer.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid
    )
    return count


async def test_maintenance_leaves_no_lock_or_setting_on_its_connection(
    single_connection_db: Database, db_conn: asyncpg.Connection
) -> None:
    async with single_connection_db.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        default_timeout = await conn.fetchval("SHOW lock_timeout")

    report = await run_maintenance(single_connection_db)

    assert report.ran
    assert report.created
    async with single_connection_db.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same connection
        assert await conn.fetchval("SHOW lock_timeout") == default_timeout
        assert await advisory_locks(db_conn, pid) == 0


async def test_maintenance_takes_its_lock_and_timeout_inside_transactions_only(
    single_connection_db: Database,
) -> None:
    # What a PgBouncer in transaction mode would carry over to other clients is whatever
    # a statement leaves outside a transaction. Read every statement sent on the pool's
    # one connection (the pool's own reset on release is not maintenance's doing).
    sent: list[str] = []

    def keep(query: LoggedQuery) -> None:
        sent.append(query.query)

    async with single_connection_db.acquire() as conn:
        reset_query = conn.get_reset_query()
        conn.add_query_logger(keep)
    try:
        report = await run_maintenance(single_connection_db)
    finally:
        async with single_connection_db.acquire() as conn:
            conn.remove_query_logger(keep)
    await asyncio.sleep(0)  # loggers are called soon after each query, not within it

    assert report.ran
    statements = [query for query in sent if query != reset_query]
    assert [query for query in statements if SESSION_SCOPED.search(query)] == []
    in_transaction = False
    outside = []
    for query in statements:
        verb = query.strip().split()[0].rstrip(";").upper()
        if verb == "BEGIN":
            in_transaction = True
        elif verb in {"COMMIT", "ROLLBACK"}:
            in_transaction = False
        elif LOCKING_OR_SETTING.search(query) and not in_transaction:
            outside.append(query)
    assert outside == []
    assert any("pg_try_advisory_xact_lock" in query for query in statements)


async def test_maintenance_does_nothing_while_another_session_holds_its_lock(
    single_connection_db: Database, db_conn: asyncpg.Connection
) -> None:
    async with db_conn.transaction():
        await db_conn.execute("SELECT pg_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY)
        # A hang guard, not a timing assertion: a run that waited for the lock would
        # wait until this transaction ends.
        report = await asyncio.wait_for(run_maintenance(single_connection_db), 60)

    assert report == MaintenanceReport(ran=False)
    partitions = await db_conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'activity_logs'::regclass"
    )
    assert partitions == 1  # only DEFAULT: nothing was made
    assert (await run_maintenance(single_connection_db)).ran  # free again once it commits
