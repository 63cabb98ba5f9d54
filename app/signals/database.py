"""Signals the database answers by itself: one short catalog or statistics query each.

Every query here reads a statistics view, a catalog or an index, never a user table in
full, and none takes a lock on a user table (sizes come from pg_class, not
pg_relation_size): on a database of a million tasks each takes well under a few milliseconds
(``scripts/bench_signals.py``; docs/benchmarks.md). Activity views are read for the
current database only, so a shared server's other databases do not fire this one's
signals. The job queue's and activity log's signals are in queue.py.
"""

from __future__ import annotations

import asyncpg

from app.config import Settings
from app.db import Connection
from app.signals.model import Signal, signal, unknown_signal

CONNECTIONS = """
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::float8
       / (current_setting('max_connections')::int
          - current_setting('superuser_reserved_connections')::int) AS share,
       current_setting('max_connections')::int AS max_connections
"""
# Cumulative since the statistics were last reset, as pghero reads it.
DB_HIT_RATIO = """
SELECT blks_hit::float8 / nullif(blks_hit + blks_read, 0) AS ratio,
       extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time())) AS age
FROM pg_stat_database WHERE datname = current_database()
"""
STATEMENTS_AVAILABLE = "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
# The slowest common statements of this database: mean time over at least N calls.
SLOW_STATEMENTS = """
SELECT mean_exec_time AS mean_ms, calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS q
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND calls >= $1
ORDER BY mean_exec_time DESC LIMIT 5
"""
# Statement calls split into reads and writes: a SELECT that locks rows is a write.
STATEMENT_CALLS = """
SELECT coalesce(sum(calls) FILTER (
           WHERE query ~* '^\\s*(select|with)\\M' AND query !~* '\\m(insert|update|delete)\\M'
             AND query !~* '\\mfor (update|share|no key update|key share)\\M'), 0)::float8 AS reads,
       coalesce(sum(calls) FILTER (
           WHERE query ~* '^\\s*(select|with|insert|update|delete|merge)\\M'), 0)::float8 AS total
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
OLDEST_ACTIVITY = """
SELECT pid, extract(epoch FROM now() - coalesce(xact_start, query_start)) AS age,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS q
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND state = $1
ORDER BY age DESC NULLS LAST LIMIT 3
"""
DB_SIZE = "SELECT pg_database_size(current_database())::float8"
# Rows and bytes from pg_class alone — reltuples and relpages, the estimates VACUUM,
# ANALYZE and CREATE INDEX keep. A count(*) would scan, and pg_total_relation_size takes a
# lock on the table: a migration holding one would stall the advisor when it matters most.
LARGEST_TABLES = """
SELECT c.oid::regclass::text AS name, greatest(c.reltuples, 0)::float8 AS rows,
       (c.relpages + coalesce(t.relpages, 0) + coalesce((
            SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = c.oid), 0))::float8
       * current_setting('block_size')::int AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY c.reltuples DESC LIMIT 5
"""
REPLICATION = """
SELECT count(*) AS replicas,
       max(extract(epoch FROM replay_lag))::float8 AS lag_seconds,
       max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8 AS lag_bytes
FROM pg_stat_replication
"""
NOTIFY_QUEUE = "SELECT pg_notification_queue_usage()"
XID_AGE = "SELECT age(datfrozenxid)::float8 FROM pg_database WHERE datname = current_database()"
UNUSED_INDEXES = """
SELECT s.indexrelid::regclass::text AS name,
       c.relpages::float8 * current_setting('block_size')::int AS bytes
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_class c ON c.oid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
  AND c.relpages::float8 * current_setting('block_size')::int >= $1
ORDER BY bytes DESC
"""
EVENTS_PUBLISHED = "SELECT coalesce(pg_sequence_last_value('events_id_seq'), 0)::float8"


async def statements_available(conn: Connection) -> str | None:
    """None when pg_stat_statements can be read, else why not."""
    if await conn.fetchval(STATEMENTS_AVAILABLE) is None:
        return "pg_stat_statements is not installed: CREATE EXTENSION pg_stat_statements"
    try:
        await conn.fetchval("SELECT 1 FROM pg_stat_statements LIMIT 1")
    except asyncpg.PostgresError:
        return (
            "pg_stat_statements is installed but not loaded: add it to "
            "shared_preload_libraries and restart PostgreSQL"
        )
    return None


async def connection_signals(conn: Connection, s: Settings) -> list[Signal]:
    row = await conn.fetchrow(CONNECTIONS)
    assert row is not None
    return [
        signal(
            "db.connections",
            round(row["share"], 4),
            "ratio",
            s.signal_connections_share,
            s.signal_connections_critical_share,
            0,
            fired=f"connections near max_connections ({row['max_connections']}): pool "
            "them with PgBouncer (DB_POOL_MODE=pgbouncer)",
            ok="connections well under max_connections",
            flag="DB_POOL_MODE",
            details=[f"max_connections={row['max_connections']}"],
        )
    ]


async def health_signals(conn: Connection, s: Settings) -> list[Signal]:
    hit = await conn.fetchrow(DB_HIT_RATIO)
    assert hit is not None
    ratio = None if hit["ratio"] is None else round(hit["ratio"], 5)
    found: list[Signal] = [
        signal(
            "db.cache_hit_ratio",
            ratio,
            "ratio",
            s.signal_db_hit_ratio_warn,
            s.signal_db_hit_ratio_critical,
            float(hit["age"]),
            lower_is_worse=True,
            fired="reads miss shared_buffers: the working set outgrew memory; a larger "
            "plan (RAM) before anything else",
            ok="the working set fits in memory",
            unknown="no block read yet",
        )
    ]
    found += [
        await _oldest_activity(
            conn,
            "active",
            "db.long_running_queries",
            s.signal_long_query_seconds,
            s.signal_long_query_critical_seconds,
            "a query runs past the limit: find it in details, index it or cancel it "
            "(pg_cancel_backend)",
        ),
        await _oldest_activity(
            conn,
            "idle in transaction",
            "db.idle_in_transaction",
            s.signal_idle_in_transaction_seconds,
            s.signal_idle_in_transaction_critical_seconds,
            "a transaction sits idle, holding locks and vacuum back: fix the code path "
            "or set idle_in_transaction_session_timeout",
        ),
    ]
    size = float(await conn.fetchval(DB_SIZE))
    limit = s.signal_db_size_limit_bytes
    found.append(
        signal(
            "db.size",
            round(size / limit, 4),
            "ratio",
            s.signal_db_size_share,
            s.signal_db_size_critical_share,
            0,
            fired="the database nears the plan's size (SIGNAL_DB_SIZE_LIMIT_BYTES): prune "
            "retention (jobs, events, activity) or move to a larger plan",
            ok="well under the plan's size",
            details=[f"{size / 1024**2:.1f} MiB of {limit / 1024**2:.0f} MiB"],
        )
    )
    tables = await conn.fetch(LARGEST_TABLES)
    found.append(
        signal(
            "db.largest_tables",
            float(tables[0]["rows"]) if tables else 0.0,
            "rows",
            s.signal_table_rows,
            s.signal_table_rows_critical,
            0,
            fired="a table passed the partitioning size: partition it by time, as "
            "activity_logs is (PARTITION BY RANGE)",
            ok="no table near the size where partitioning pays",
            details=[
                f"{t['name']}: {t['rows']:,.0f} rows, {t['bytes'] / 1024**2:,.1f} MiB"
                for t in tables
            ],
        )
    )
    found.append(
        signal(
            "db.notify_queue_usage",
            float(await conn.fetchval(NOTIFY_QUEUE)),
            "ratio",
            s.signal_notify_queue_usage,
            s.signal_notify_queue_usage_critical,
            0,
            fired="the NOTIFY queue fills (a listener lags or a transaction stays open): "
            "move pub/sub to Redis (PUBSUB_BACKEND=redis)",
            ok="the NOTIFY queue is nearly empty",
            flag="PUBSUB_BACKEND",
        )
    )
    found.append(
        signal(
            "db.xid_age",
            float(await conn.fetchval(XID_AGE)),
            "transactions",
            s.signal_xid_age_warn,
            s.signal_xid_age_critical,
            0,
            fired="transaction ids near wraparound: run VACUUM (FREEZE) and find what "
            "blocks autovacuum",
            ok="autovacuum keeps transaction ids frozen",
        )
    )
    unused = await conn.fetch(UNUSED_INDEXES, s.signal_unused_index_bytes)
    found.append(
        signal(
            "db.unused_indexes",
            float(len(unused)),
            "indexes",
            s.signal_unused_indexes_warn,
            s.signal_unused_indexes_critical,
            0,
            fired="large indexes never scanned since the statistics reset slow every "
            "write: drop them (DROP INDEX CONCURRENTLY) after checking replicas too",
            ok="every large index is used",
            details=[f"{u['name']}: {u['bytes'] / 1024**2:,.1f} MiB" for u in unused],
        )
    )
    return found


async def _oldest_activity(
    conn: Connection, state: str, key: str, warn: float, critical: float, fired: str
) -> Signal:
    rows = await conn.fetch(OLDEST_ACTIVITY, state)
    age = float(rows[0]["age"]) if rows and rows[0]["age"] is not None else 0.0
    return signal(
        key,
        round(age, 3),
        "seconds",
        warn,
        critical,
        0,
        fired=fired,
        ok="nothing past the limit",
        details=[f"pid {r['pid']}, {r['age']:.0f} s: {r['q']}" for r in rows if r["age"]],
    )


async def slow_query_signal(conn: Connection, s: Settings) -> Signal:
    key, warn, critical = (
        "db.slow_queries",
        s.signal_slow_query_mean_ms,
        s.signal_slow_query_critical_ms,
    )
    why = await statements_available(conn)
    if why is not None:
        return unknown_signal(key, "ms", warn, critical, 0, why)
    rows = await conn.fetch(SLOW_STATEMENTS, s.signal_slow_query_min_calls)
    return signal(
        key,
        round(float(rows[0]["mean_ms"]), 3) if rows else 0.0,
        "ms",
        warn,
        critical,
        0,
        fired="a common query is slow: EXPLAIN the statement in details and index it, "
        "then cache its result",
        ok=f"no statement with {s.signal_slow_query_min_calls}+ calls is slow",
        flag=None,
        details=[
            f"{r['mean_ms']:,.1f} ms x {r['calls']}: {r['q']}"
            for n, r in enumerate(rows)
            if n == 0 or r["mean_ms"] >= warn
        ],
    )


async def statement_counters(conn: Connection) -> tuple[float, float] | None:
    """Cumulative (read, total) statement calls, or None without pg_stat_statements."""
    if await statements_available(conn) is not None:
        return None
    row = await conn.fetchrow(STATEMENT_CALLS)
    assert row is not None
    return float(row["reads"]), float(row["total"])


async def replication(conn: Connection) -> tuple[int, float | None, float | None]:
    row = await conn.fetchrow(REPLICATION)
    assert row is not None
    return int(row["replicas"]), row["lag_seconds"], row["lag_bytes"]


async def events_published(conn: Connection) -> float:
    return float(await conn.fetchval(EVENTS_PUBLISHED))
