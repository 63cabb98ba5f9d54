"""What one sample of the signals advisor costs on a large database, statement by statement.

    .venv/bin/python -m scripts.bench_signals [--tasks 1000000] [--samples 20] [--seed]

Seeds a throwaway embedded PostgreSQL (DATABASE_URL instead, used as it is) with
``--tasks`` tasks — written in one SQL statement (1,000 users, short titles and bodies), or
with ``--seed`` by scripts/seed.py (realistic text and embeddings; a quarter of an hour
here). The advisor reads catalogs, statistics and indexes, never task rows, so the
quick fill measures the same thing. Then a backlog of 100,000 available and 20,000 dead jobs,
and a week of recorded samples (7 x 1,440 samples x 26 signals), then runs
``measure(record=True)`` — exactly what the ``pgfirst.sample_signals`` job runs — ``--samples``
times with pg_stat_statements reset first. Prints the wall time of a sample (p50, max) and
every statement it ran with its mean and max execution time, slowest first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import asyncpg

from app.config import load_settings
from app.services import open_services
from app.signals import measure
from scripts.benchkit import percentile, postgres

BACKLOG = """
INSERT INTO jobs (name, queue, args, state, run_at, priority)
SELECT 'pgfirst.prune_jobs', 'default', '{}', 'available', now() - interval '1 minute',
       g % 3
FROM generate_series(1, $1) g
"""
USERS_AND_TASKS = """
WITH users_made AS (
    INSERT INTO users (email, password_hash)
    SELECT 'bench' || g || '@example.com', 'not-a-hash' FROM generate_series(1, 1000) g
    RETURNING id
)
INSERT INTO tasks (user_id, title, body)
SELECT (SELECT min(id) FROM users_made) + g % 1000, 'task ' || g, md5(g::text)
FROM generate_series(1, $1) g
"""
DEAD = """
INSERT INTO jobs (name, queue, args, state, run_at, attempt, finished_at)
SELECT 'pgfirst.prune_jobs', 'default', '{}', 'dead', now() - interval '1 hour', 20,
       now() - (g % 3600) * interval '1 second'
FROM generate_series(1, $1) g
"""
WEEK_OF_SAMPLES = """
INSERT INTO signal_samples (key, sampled_at, status, value)
SELECT 'bench.signal_' || k, now() - m * interval '1 minute',
       CASE WHEN m % 50 = 0 THEN 'warn' ELSE 'ok' END, random()
FROM generate_series(1, 26) k, generate_series(1, 7 * 1440) m
"""
STATEMENTS = """
SELECT calls, mean_exec_time, max_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query !~* 'pg_stat_statements'
ORDER BY max_exec_time DESC
"""


async def prepare(dsn: str, tasks: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if tasks:
            await conn.execute(USERS_AND_TASKS, tasks)
        await conn.execute(BACKLOG, 100_000)
        await conn.execute(DEAD, 20_000)
        await conn.execute(WEEK_OF_SAMPLES)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def bench(dsn: str, samples: int) -> None:
    settings = load_settings(database_url=dsn, jobs_inline_worker=False)
    async with open_services(settings) as services:
        await measure(services.db, settings, record=True)  # warm: plans, caches
        async with services.db.acquire() as conn:
            await conn.execute("SELECT pg_stat_statements_reset()")
        walls: list[float] = []
        for _ in range(samples):
            started = time.perf_counter()
            await measure(services.db, settings, record=True)
            walls.append((time.perf_counter() - started) * 1000)
        async with services.db.acquire() as conn:
            rows = await conn.fetch(STATEMENTS)
            tasks = await conn.fetchval("SELECT count(*) FROM tasks")
    print(
        f"{tasks:,} tasks; {samples} samples: p50 {percentile(walls, 0.5):.1f} ms, "
        f"max {max(walls):.1f} ms per sample (wall, client included)"
    )
    print(f"{'calls':>6} {'mean ms':>8} {'max ms':>8}  statement")
    for calls, mean, worst, query in rows:
        print(f"{calls:>6} {mean:>8.3f} {worst:>8.3f}  {query}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", action="store_true", help="Seed with scripts/seed.py.")
    args = parser.parse_args()
    with ExitStack() as stack:
        given = os.environ.get("DATABASE_URL")
        dsn = stack.enter_context(postgres(durable=False))
        if not given:
            if args.seed:
                env = {**os.environ, "DATABASE_URL": dsn}
                seed = [sys.executable, "-m", "scripts.seed", "--tasks", str(args.tasks)]
                subprocess.run(seed, env=env, check=True)
            asyncio.run(prepare(dsn, 0 if args.seed else args.tasks))
        asyncio.run(bench(dsn, args.samples))


if __name__ == "__main__":
    main()
