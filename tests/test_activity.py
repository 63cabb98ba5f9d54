"""Partitioned activity log: routing, transactions, maintenance, feed pagination."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.activity import record, record_many
from app.activity.feed import CLOCK_MARGIN, FIRST_PAGE, read_feed
from app.activity.partitions import maintain, partition_name, period_start, shift
from app.config import Settings
from app.db import Database
from app.pagination import InvalidCursor

SECRET = "activity-test-secret"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings, settings.database_url)
    yield database
    await database.close()


async def run_maintenance(db: Database, now: datetime = NOW, **overrides: int) -> object:
    options = {"premake": 2, "retention": 3} | overrides
    return await maintain(db, interval="month", now=now, **options)  # type: ignore[arg-type]


async def partitions(db: Database) -> list[str]:
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'activity_logs'::regclass ORDER BY 1"
        )
    return [row["relname"] for row in rows]


async def test_maintenance_creates_current_and_future_partitions(db: Database) -> None:
    report = await run_maintenance(db)
    assert report.created == [  # type: ignore[attr-defined]
        "activity_logs_p20261101",
        "activity_logs_p20261201",
        "activity_logs_p20270101",
    ]
    assert await partitions(db) == [
        "activity_logs_default",
        "activity_logs_p20261101",
        "activity_logs_p20261201",
        "activity_logs_p20270101",
    ]


async def test_maintenance_is_idempotent(db: Database) -> None:
    await run_maintenance(db)
    again = await run_maintenance(db)
    assert again.created == []  # type: ignore[attr-defined]
    assert again.retired == []  # type: ignore[attr-defined]
    assert len(await partitions(db)) == 4


async def test_writes_land_in_the_partition_of_their_month(db: Database) -> None:
    await run_maintenance(db, now=datetime.now(UTC))
    async with db.transaction() as conn:
        await record(conn, 7, "task.created", ("task", 1), {"title": "x"})
        await record_many(conn, [(7, "old.event", None, None, {}, NOW - timedelta(days=400))])
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT action, tableoid::regclass::text AS part FROM activity_logs ORDER BY action"
        )
    placement = {row["action"]: row["part"] for row in rows}
    assert placement["task.created"] == partition_name(period_start(datetime.now(UTC), "month"))
    assert placement["old.event"] == "activity_logs_default"  # no partition for that month


async def test_a_rolled_back_action_leaves_no_log_row(db: Database) -> None:
    await run_maintenance(db, now=datetime.now(UTC))

    async def act_then_fail() -> None:
        async with db.transaction() as conn:
            await record(conn, 7, "task.deleted", ("task", 9))
            raise RuntimeError("the action failed")

    with pytest.raises(RuntimeError):
        await act_then_fail()
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM activity_logs") == 0


async def test_maintenance_drops_partitions_past_retention(db: Database) -> None:
    await run_maintenance(db, now=NOW - timedelta(days=120))  # makes July..September 2026
    async with db.acquire() as conn:
        await record_many(conn, [(1, "ancient", None, None, {}, datetime(2026, 7, 10, tzinfo=UTC))])
    report = await run_maintenance(db)  # in November, 3 whole months kept: August onwards
    assert report.retired == ["activity_logs_p20260701"]  # type: ignore[attr-defined]
    remaining = await partitions(db)
    assert "activity_logs_p20260701" not in remaining
    assert "activity_logs_p20260801" in remaining
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM activity_logs") == 0
        assert await conn.fetchval("SELECT to_regclass('activity_logs_p20260701')") is None


async def test_maintenance_drains_the_default_partition(db: Database) -> None:
    stray = [
        (1, "in.retention", None, None, {}, datetime(2026, 9, 15, tzinfo=UTC)),
        (1, "expired", None, None, {}, datetime(2025, 1, 1, tzinfo=UTC)),
        (1, "far.future", None, None, {}, datetime(2030, 1, 1, tzinfo=UTC)),
    ]
    async with db.acquire() as conn:
        await record_many(conn, stray)  # no partitions yet: all land in DEFAULT
    report = await run_maintenance(db)
    assert "activity_logs_p20260901" in report.created  # type: ignore[attr-defined]
    assert report.moved_rows == 1  # type: ignore[attr-defined]
    assert report.deleted_rows == 1  # type: ignore[attr-defined]
    assert report.default_rows_left == 1  # the 2030 row stays, and is reported
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT action, tableoid::regclass::text AS part FROM activity_logs"
        )
    assert {row["action"]: row["part"] for row in rows} == {
        "in.retention": "activity_logs_p20260901",
        "far.future": "activity_logs_default",
    }


async def test_concurrent_maintenance_runs_do_not_conflict(db: Database) -> None:
    reports = await asyncio.gather(*(run_maintenance(db) for _ in range(4)))
    created = [name for r in reports for name in r.created]  # type: ignore[attr-defined]
    assert sorted(created) == sorted(set(created))  # nothing made twice
    assert len(await partitions(db)) == 4
    assert await run_maintenance(db)  # and a later run still works


async def test_feed_paginates_across_a_partition_boundary(db: Database) -> None:
    await run_maintenance(db)
    boundary = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        (1, f"a{n}", None, None, {"n": n}, boundary + timedelta(hours=n - 5)) for n in range(10)
    ]
    rows += [(2, "someone.else", None, None, {}, boundary)]
    await run_maintenance(db, now=boundary - timedelta(days=1))  # October partition too
    async with db.acquire() as conn:
        await record_many(conn, rows)
        seen: list[int] = []
        cursor = None
        while True:
            page = await read_feed(conn, SECRET, 1, limit=3, cursor=cursor)
            seen.extend(item.metadata["n"] for item in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert seen == list(range(9, -1, -1))  # newest first, no gaps, no duplicates


async def test_feed_shows_only_the_users_own_activity(db: Database) -> None:
    await run_maintenance(db, now=datetime.now(UTC))
    async with db.transaction() as conn:
        await record(conn, 1, "mine")
        await record(conn, 2, "theirs")
    async with db.acquire() as conn:
        page = await read_feed(conn, SECRET, 1, limit=10)
    assert [item.action for item in page.items] == ["mine"]


async def test_the_first_page_shows_rows_stamped_ahead_of_the_app_clock(db: Database) -> None:
    # A database clock a little ahead of the app's must not hide the newest rows.
    now = datetime.now(UTC)
    await run_maintenance(db, now=now)
    async with db.acquire() as conn:
        await record_many(conn, [(1, "ahead", None, None, {}, now + timedelta(minutes=30))])
        page = await read_feed(conn, SECRET, 1, limit=10)
    assert [item.action for item in page.items] == ["ahead"]


async def test_the_first_page_reads_only_the_partitions_of_its_window(db: Database) -> None:
    # Both ends of created_at are bound, so the planner leaves out the premade future
    # partitions and DEFAULT: a newest page costs the index probes of its window only.
    await run_maintenance(db, now=NOW - timedelta(days=31))  # the month before, too
    await run_maintenance(db)
    lower = NOW - timedelta(days=32)
    async with db.acquire() as conn:
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {FIRST_PAGE}", 1, lower, NOW + CLOCK_MARGIN, 21
        )
    text = plan if isinstance(plan, str) else json.dumps(plan)
    scanned = set(re.findall(r'"Relation Name": "(activity_logs_\w+)"', text))
    months = {period_start(NOW, "month"), period_start(lower, "month")}
    assert scanned == {partition_name(month) for month in months}


async def test_a_forged_cursor_is_refused(db: Database) -> None:
    async with db.acquire() as conn:
        with pytest.raises(InvalidCursor):
            await read_feed(conn, SECRET, 1, limit=10, cursor="bm90LWEtY3Vyc29y")


def test_periods_shift_across_year_ends() -> None:
    december = period_start(datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "month")
    assert shift(december, "month", 1) == datetime(2027, 1, 1, tzinfo=UTC)
    assert shift(december, "month", -12) == datetime(2025, 12, 1, tzinfo=UTC)
    assert period_start(datetime(2026, 11, 26, tzinfo=UTC), "week") == datetime(
        2026, 11, 23, tzinfo=UTC
    )
