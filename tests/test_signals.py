"""Database signals, each made true on a fresh database and read back from the advisor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app.config import Settings
from app.services import Services, open_services
from app.signals import Report, Signal, measure
from tests.helpers import eventually


def signal_of(report: Report, key: str) -> Signal:
    [found] = [item for item in report.signals if item.key == key]
    return found


OpenWith = Callable[..., AbstractAsyncContextManager[Services]]


@pytest.fixture
def open_with(make_settings: Callable[..., Settings]) -> OpenWith:
    """``async with open_with(**settings) as services``."""
    return lambda **overrides: open_services(make_settings(**overrides))


async def read(services: Services, key: str, *, record: bool = False) -> Signal:
    return signal_of(await measure(services.db, services.settings, record=record), key)


async def test_every_required_signal_is_reported(open_with: OpenWith) -> None:
    async with open_with() as services:
        report = await measure(services.db, services.settings)
    required = {
        "db.connections", "db.pool_wait", "db.cache_hit_ratio", "db.slow_queries",
        "db.long_running_queries", "db.idle_in_transaction", "db.size", "db.largest_tables",
        "db.read_share", "db.replica_lag", "db.notify_queue_usage", "db.xid_age",
        "db.unused_indexes", "http.latency_p50", "http.latency_p99", "http.slow_responses",
        "http.error_rate", "jobs.queue_depth", "jobs.oldest_wait_seconds", "jobs.dead",
        "cache.hit_ratio", "cache.hot_keys", "cache.connection_waits", "pubsub.publish_rate",
        "activity.default_partition_rows", "host.cpu", "host.memory",
    }  # fmt: skip
    assert required <= {item.key for item in report.signals}


async def test_a_fresh_database_is_a_prototype_with_no_database_signal_fired(
    open_with: OpenWith,
) -> None:
    # Backends named: a Redis backend or a pooler alone would make it a later stage.
    async with open_with(cache_backend="postgres", db_pool_mode="direct") as services:
        report = await measure(services.db, services.settings)
    assert report.stage.number == 1
    fired = {item.key for item in report.signals if item.fired}
    assert not {key for key in fired if key.startswith(("db.", "jobs.", "activity."))}


async def test_connections_near_the_limit_fire_with_the_pooler_recommended(
    open_with: OpenWith, database_url: str
) -> None:
    extra = [await asyncpg.connect(database_url) for _ in range(10)]
    try:
        # 10 of ~197 usable connections is over 5 %: the threshold a test can reach.
        async with open_with(
            signal_connections_share=0.05, signal_connections_critical_share=0.99
        ) as services:
            found = await read(services, "db.connections")
    finally:
        await asyncio.gather(*(conn.close() for conn in extra))
    assert found.status == "warn"
    assert "DB_POOL_MODE=pgbouncer" in found.recommendation


async def test_slow_common_statement_fires_with_the_statement_listed(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    for _ in range(5):
        await db_conn.execute("SELECT pg_sleep(0.02)")
    async with open_with(signal_slow_query_mean_ms=10, signal_slow_query_min_calls=5) as services:
        found = await read(services, "db.slow_queries")
    assert found.status == "warn"
    assert found.value is not None
    assert found.value >= 20
    assert "index it" in found.recommendation
    assert any("pg_sleep" in line for line in found.details)


async def test_statement_under_the_call_minimum_does_not_count(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute("SELECT pg_sleep(0.02)")
    async with open_with(signal_slow_query_mean_ms=10, signal_slow_query_min_calls=5) as services:
        found = await read(services, "db.slow_queries")
    assert found.status == "ok"


async def test_long_running_query_fires_with_its_pid(
    open_with: OpenWith, database_url: str
) -> None:
    sleeper = await asyncpg.connect(database_url)
    running = asyncio.create_task(sleeper.execute("SELECT pg_sleep(30)"))
    try:
        async with open_with(signal_long_query_seconds=0.2) as services:
            found = await eventually(
                lambda: read(services, "db.long_running_queries"), lambda s: s.fired
            )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        sleeper.terminate()
    assert found.status == "warn"
    assert any("pg_sleep(30)" in line for line in found.details)


async def test_idle_transaction_fires(open_with: OpenWith, database_url: str) -> None:
    idle = await asyncpg.connect(database_url)
    transaction = idle.transaction()
    await transaction.start()
    await idle.execute("SELECT 1")
    try:
        async with open_with(signal_idle_in_transaction_seconds=0.2) as services:
            found = await eventually(
                lambda: read(services, "db.idle_in_transaction"), lambda s: s.fired
            )
    finally:
        await transaction.rollback()
        await idle.close()
    assert found.status == "warn"
    assert "idle_in_transaction_session_timeout" in found.recommendation


async def test_database_past_the_plan_size_is_critical(open_with: OpenWith) -> None:
    async with open_with(signal_db_size_limit_bytes=1024**2) as services:
        found = await read(services, "db.size")
    assert found.status == "critical"
    assert "retention" in found.recommendation


async def test_largest_table_past_the_row_threshold_recommends_partitioning(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute("CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 5000) g")
    await db_conn.execute("ANALYZE big")
    async with open_with(signal_table_rows=1000) as services:
        found = await read(services, "db.largest_tables")
    assert (found.status, found.value) == ("warn", 5000)
    assert "partition" in found.recommendation
    assert found.details[0].startswith("big: 5,000 rows")


async def test_never_scanned_index_is_listed_as_unused(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")
    await db_conn.execute("CREATE INDEX t_n_unused ON t (n)")
    async with open_with(
        signal_unused_index_bytes=8192, signal_unused_indexes_critical=1000
    ) as services:
        found = await read(services, "db.unused_indexes")
    assert found.status == "warn"
    assert any(line.startswith("t_n_unused") for line in found.details)


async def test_thresholds_come_from_settings(open_with: OpenWith) -> None:
    async with open_with(signal_xid_age_warn=1, signal_xid_age_critical=10**12) as services:
        found = await read(services, "db.xid_age")
    assert (found.status, found.warn, found.critical) == ("warn", 1, 10**12)


async def test_reads_dominating_under_load_fire_the_read_share(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    async with open_with(
        signal_read_min_statements_per_second=1,
        signal_read_share_critical=2,
        signal_rate_min_window_seconds=0,
    ) as services:
        await measure(services.db, services.settings, record=True)  # the counters' baseline
        for _ in range(300):
            await db_conn.fetchval("SELECT count(*) FROM users")
        found = await read(services, "db.read_share")
    assert found.status == "warn"
    assert "DATABASE_REPLICA_URLS" in found.recommendation


async def test_a_rate_over_a_too_short_window_grades_nothing(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    # A burst right after a sample would read as thousands of statements per second.
    async with open_with(signal_read_min_statements_per_second=1) as services:
        await measure(services.db, services.settings, record=True)
        for _ in range(300):
            await db_conn.fetchval("SELECT count(*) FROM users")
        found = await read(services, "db.read_share")
    assert found.status == "unknown"
    assert "a rate needs 10 s" in found.recommendation


async def test_replica_urls_without_a_streaming_replica_are_critical(
    open_with: OpenWith, database_url: str
) -> None:
    async with open_with() as services:
        quiet = await read(services, "db.replica_lag")
    assert (quiet.status, quiet.value) == ("ok", None)
    async with open_with(database_replica_urls=[database_url]) as services:
        found = await read(services, "db.replica_lag")
    assert found.status == "critical"
    assert "no replica streams" in found.recommendation


async def test_job_backlog_fires_depth_and_wait_with_more_workers_recommended(
    open_with: OpenWith,
) -> None:
    async with open_with(signal_queue_depth_warn=20) as services:
        past = datetime.now(UTC) - timedelta(minutes=2)
        await services.jobs.enqueue_many("pgfirst.prune_jobs", [{}] * 25, run_at=past)
        report = await measure(services.db, services.settings)
    depth = signal_of(report, "jobs.queue_depth")
    wait = signal_of(report, "jobs.oldest_wait_seconds")
    assert (depth.status, depth.value) == ("warn", 25)
    assert wait.status == "warn"
    assert wait.value is not None
    assert wait.value >= 120
    assert "`app worker`" in depth.recommendation


async def test_dead_jobs_in_the_window_fire(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    async with open_with() as services:
        job_id = await services.jobs.enqueue("pgfirst.prune_jobs", {})
        await db_conn.execute(
            "UPDATE jobs SET state = 'dead', finished_at = now() WHERE id = $1", job_id
        )
        found = await read(services, "jobs.dead")
    assert (found.status, found.value) == ("warn", 1)
    assert "app jobs retry" in found.recommendation


async def test_activity_rows_in_the_default_partition_fire(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute(
        "INSERT INTO activity_logs (user_id, action, created_at) VALUES (1, 'test', '2199-01-01')"
    )
    async with open_with() as services:
        found = await read(services, "activity.default_partition_rows")
    assert (found.status, found.value) == ("warn", 1)
    assert "app activity maintain" in found.recommendation


async def test_publish_rate_is_measured_between_samples(
    open_with: OpenWith,
) -> None:
    async with open_with(
        signal_publish_rate_warn=1, pubsub_backend="postgres", signal_rate_min_window_seconds=0
    ) as services:
        first = await read(services, "pubsub.publish_rate", record=True)
        for n in range(50):
            await services.broker.publish("signals-test", {"n": n})
        found = await read(services, "pubsub.publish_rate")
    assert first.status == "unknown"
    assert found.status in {"warn", "critical"}
    assert "PUBSUB_BACKEND=redis" in found.recommendation


async def test_advisor_answers_while_a_table_is_locked(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    transaction = db_conn.transaction()
    await transaction.start()
    await db_conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
    try:
        async with open_with(db_command_timeout=5) as services:
            report = await measure(services.db, services.settings)
    finally:
        await transaction.rollback()
    assert signal_of(report, "db.largest_tables").status == "ok"
    assert signal_of(report, "db.idle_in_transaction").status == "ok"


async def test_sampling_job_records_every_signal_and_pruning_drops_old_samples(
    open_with: OpenWith, db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute(
        "INSERT INTO signal_samples (key, sampled_at, status)"
        " VALUES ('old', now() - interval '8 days', 'ok')"
    )
    async with open_with() as services:
        sample = services.jobs.registry.get("pgfirst.sample_signals")
        prune = services.jobs.registry.get("pgfirst.prune_signals")
        assert sample is not None
        assert prune is not None
        fired = await sample.handler()
        await prune.handler()
    keys = await db_conn.fetch("SELECT key, status FROM signal_samples")
    assert "old" not in {row["key"] for row in keys}
    assert len(keys) == 27
    assert fired == sum(1 for row in keys if row["status"] in ("warn", "critical"))
