"""Activity log: monthly partitions against one unpartitioned table, same data, same run.

    uv run python -m scripts.bench_activity [--rows 10000000] [--months 24] [--repeats 3]

Loads ``--rows`` log rows spread over ``--months`` months (10,000 users) into the
partitioned ``activity_logs`` and into ``activity_logs_flat``, an ordinary table with the
same primary key and feed index. Then, for both:

- feed page latency (20 rows) at the newest rows and 12 months back, p50/p99 over 300
  random users: the partitioned table through the API's own ``read_feed``, the flat one
  through the plain keyset query on its equivalent index;
- insert throughput: 100,000 rows by COPY (the bulk path) and 2,000 single-row INSERTs;
- retiring the oldest month: DETACH + DROP of its partition vs DELETE ... WHERE created_at
  < month end (+ the VACUUM a DELETE owes), while a writer inserts one row at a time; the
  writer's worst insert latency shows how long writes were blocked.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from app.activity.feed import ActivityEntry, read_feed
from app.activity.partitions import maintain, partition_name, shift
from app.config import load_settings
from app.db import Connection, Database
from app.pagination import read_timestamp_cursor, timestamp_cursor
from scripts.benchkit import percentile, postgres

FLAT_DDL = """
CREATE TABLE activity_logs_flat (LIKE activity_logs INCLUDING DEFAULTS);
ALTER TABLE activity_logs_flat ADD PRIMARY KEY (created_at, id);
CREATE INDEX activity_logs_flat_user_feed
    ON activity_logs_flat (user_id, created_at DESC, id DESC);
"""
# Server-side generation: the fastest honest way to make 10M rows.
FILL = """
INSERT INTO {table} (user_id, action, subject_type, subject_id, metadata, created_at)
SELECT 1 + (g * 7919) % $3, 'task.updated', 'task', g, '{{}}',
       $1::timestamptz + (g::float8 / $4) * ($2::timestamptz - $1::timestamptz)
FROM generate_series($5::bigint, $6::bigint) AS g
"""
FLAT_FEED = """
SELECT id, action, subject_type, subject_id, metadata, created_at FROM activity_logs_flat
WHERE user_id = $1 AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC
LIMIT 21
"""
SECRET = "bench-secret"  # noqa: S105 - signs throwaway cursors
USERS = 10_000


async def fill(
    conn: asyncpg.Connection, table: str, start: datetime, end: datetime, rows: int
) -> float:
    began = time.perf_counter()
    step = 1_000_000
    for low in range(0, rows, step):
        high = min(rows, low + step) - 1
        await conn.execute(FILL.format(table=table), start, end, USERS, rows, low, high)
    await conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - began


async def feed_latency(conn: Connection, table: str, at: datetime | None) -> list[float]:
    """The partitioned table through the API's own read_feed; the flat one by plain keyset."""
    sql = FLAT_FEED
    cursor = timestamp_cursor(SECRET, at, 2**62) if at else None
    latencies = []
    rng = random.Random(7)
    for _ in range(300):
        user = rng.randint(1, USERS)
        began = time.perf_counter()
        if table == "activity_logs":
            await read_feed(conn, SECRET, user, limit=20, cursor=cursor)
        else:  # same work as read_feed: read the cursor, query, the models, the next cursor
            if cursor:
                read_timestamp_cursor(SECRET, cursor)
            rows = await conn.fetch(sql, user, at or datetime.now(UTC) + timedelta(days=1), 2**62)
            items = [ActivityEntry(**dict(row)) for row in rows[:20]]
            if len(rows) > 20:
                timestamp_cursor(SECRET, items[-1].created_at, items[-1].id)
        latencies.append(time.perf_counter() - began)
    return latencies


async def copy_throughput(conn: Connection, table: str, at: datetime) -> float:
    records = [(n % USERS + 1, "bench.copy", "task", n, {}, None, at) for n in range(100_000)]
    columns = (
        "user_id",
        "action",
        "subject_type",
        "subject_id",
        "metadata",
        "request_id",
        "created_at",
    )
    began = time.perf_counter()
    await conn.copy_records_to_table(table, records=records, columns=columns)
    return len(records) / (time.perf_counter() - began)


async def insert_throughput(conn: Connection, table: str, at: datetime) -> float:
    sql = (
        f"INSERT INTO {table} (user_id, action, metadata, created_at) "
        "VALUES ($1, 'bench.one', '{}', $2)"
    )
    began = time.perf_counter()
    for n in range(2_000):
        await conn.execute(sql, n % USERS + 1, at)
    return 2_000 / (time.perf_counter() - began)


async def retire_under_writes(
    dsn: str, table: str, statement: list[str], at: datetime
) -> tuple[float, float]:
    """Run ``statement`` while another connection inserts; (seconds, worst insert ms)."""
    writer = await asyncpg.connect(dsn)
    retirer = await asyncpg.connect(dsn)
    worst = 0.0
    done = asyncio.Event()

    async def write() -> None:
        nonlocal worst
        sql = f"INSERT INTO {table} (user_id, action, created_at) VALUES (1, 'w', $1)"
        while not done.is_set():
            began = time.perf_counter()
            await writer.execute(sql, at)
            worst = max(worst, time.perf_counter() - began)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    began = time.perf_counter()
    for sql in statement:
        await retirer.execute(sql)
    elapsed = time.perf_counter() - began
    done.set()
    await task
    await writer.close()
    await retirer.close()
    return elapsed, worst * 1000


async def run(dsn: str, rows: int, months: int, repeats: int) -> None:
    settings = load_settings(env="test", database_url=dsn)
    now = datetime.now(UTC)
    db = await Database.connect(settings, dsn)
    await maintain(db, interval="month", premake=1, retention=months + 1, now=now)
    # partitions for every month of the data
    for back in range(months, 0, -1):
        await maintain(
            db, interval="month", premake=1, retention=months + 1, now=shift(now, "month", -back)
        )
    conn = await db.connect_direct()  # with the app's codecs (jsonb as dicts)
    await db.close()

    start = shift(
        now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), "month", -(months - 1)
    )
    end = now
    for statement in FLAT_DDL.strip().split(";\n"):
        if statement.strip():
            await conn.execute(statement)
    load = {
        t: await fill(conn, t, start, end, rows) for t in ("activity_logs", "activity_logs_flat")
    }
    print(
        f"loaded {rows:,} rows over {months} months: "
        + ", ".join(f"{t} {s:.0f} s" for t, s in load.items())
    )

    results: dict[str, dict[str, list[float]]] = {}
    year_ago = now - timedelta(days=365)
    for table in ("activity_logs", "activity_logs_flat"):
        metrics: dict[str, list[float]] = {}
        for _ in range(repeats):
            recent = await feed_latency(conn, table, None)
            old = await feed_latency(conn, table, year_ago)
            metrics.setdefault("feed p50 ms, newest", []).append(percentile(recent, 0.5) * 1000)
            metrics.setdefault("feed p99 ms, newest", []).append(percentile(recent, 0.99) * 1000)
            metrics.setdefault("feed p50 ms, 12 months back", []).append(
                percentile(old, 0.5) * 1000
            )
            metrics.setdefault("feed p99 ms, 12 months back", []).append(
                percentile(old, 0.99) * 1000
            )
            metrics.setdefault("COPY rows/s", []).append(await copy_throughput(conn, table, now))
            metrics.setdefault("single INSERT rows/s", []).append(
                await insert_throughput(conn, table, now)
            )
        results[table] = metrics

    oldest = start
    oldest_end = shift(oldest, "month", 1)
    part = partition_name(oldest)
    drop_s, drop_worst = await retire_under_writes(
        dsn,
        "activity_logs",
        [f"ALTER TABLE activity_logs DETACH PARTITION {part}", f"DROP TABLE {part}"],
        now,
    )
    delete_s, delete_worst = await retire_under_writes(
        dsn,
        "activity_logs_flat",
        [
            f"DELETE FROM activity_logs_flat WHERE created_at < '{oldest_end.isoformat()}'",
            "VACUUM activity_logs_flat",
        ],
        now,
    )
    await conn.execute("DROP TABLE activity_logs_flat")
    await conn.close()

    print(f"\nactivity log, {rows:,} rows, medians of {repeats}")
    print(f"{'metric':<30}{'partitioned':>14}{'flat':>14}{'part/flat':>11}")
    for metric in results["activity_logs"]:
        p = statistics.median(results["activity_logs"][metric])
        f = statistics.median(results["activity_logs_flat"][metric])
        print(f"{metric:<30}{p:>14.2f}{f:>14.2f}{p / f:>11.2f}")
    print(
        f"{'retire oldest month, s':<30}{drop_s:>14.3f}{delete_s:>14.3f}{drop_s / delete_s:>11.4f}"
    )
    print(f"{'worst insert during it, ms':<30}{drop_worst:>14.1f}{delete_worst:>14.1f}")
    print(f"retiring a month: DETACH+DROP is {delete_s / drop_s:,.0f}x faster than DELETE+VACUUM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with postgres() as dsn:
        asyncio.run(run(dsn, options.rows, options.months, options.repeats))


if __name__ == "__main__":
    main()
