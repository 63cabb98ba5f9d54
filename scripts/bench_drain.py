"""Drain as an outsider measures it: one worker process per queue, on an analysed table.

    uv run --group bench python -m scripts.bench_drain [--jobs 20000] [--repeats 3]
        [--only pgfirst,pgqueuer,raw,raw-jobs] [--burst] [--idle 6]

(`scripts/bench_jobs.py --outsider` runs the same.) For each contender in turn, repeats
alternating: the parent enqueues ``--jobs`` no-op jobs and runs ANALYZE on the queue's
table, then starts the worker in its own process (``python -m scripts.bench_drain --child
NAME``). The child imports everything, opens its connections, says ``ready`` and waits;
the clock starts at ``go`` and stops when the child has run every job. The child reports
the wall time and its own CPU time, so the per-job cost in Python is visible apart from
the server's.

- pgfirst: ``Worker`` with its defaults (concurrency 10, claim batch 100), as ``app
  worker`` runs it, until a no-op handler has counted the last job;
- pgqueuer: ``PgQueuer.run(batch_size=100)``;
- raw: the floor any queue pays — 10 coroutines, each on its own connection: BEGIN,
  claim 100 rows ``FOR UPDATE SKIP LOCKED`` from a bare table (id, name, args), run them,
  DELETE them, COMMIT. No retries, timeouts, heartbeats or metrics;
- raw-jobs: the same loop on pgfirst's own ``jobs`` table, its rows, indexes and claim
  order — the floor for this table layout.

``--burst`` measures the case production meets most: the workers have been running on an
empty queue (whose statistics say so) for ``--idle`` seconds when ``--jobs`` jobs arrive
in one commit, not analysed, with the wake-up each one's enqueue sends (pgfirst's NOTIFY,
pgqueuer's trigger; the raw loops poll every 10 ms). The clock runs from that commit to
the last job; the CPU column is left out there, since it would include the idle polling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import asyncpg
import uvloop

from scripts.benchkit import postgres

CONTENDERS = ("pgfirst", "pgqueuer", "raw", "raw-jobs")
RAW_TABLE = """
CREATE TABLE IF NOT EXISTS bench_raw_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}'
)
"""
RAW_CLAIM = "SELECT id, name, args FROM bench_raw_jobs ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"
RAW_DONE = "DELETE FROM bench_raw_jobs WHERE id = ANY($1::bigint[])"
# The same loop on pgfirst's own table: its rows, its indexes, its claim order.
RAW_JOBS_CLAIM = """
SELECT id, name, args FROM jobs
WHERE state = 'available' AND queue = ANY($1::text[]) AND run_at <= now()
ORDER BY priority DESC, run_at, id
LIMIT 100
FOR UPDATE SKIP LOCKED
"""
RAW_JOBS_DONE = "DELETE FROM jobs WHERE id = ANY($1::bigint[])"


# --- the parent: enqueue, analyse, start the child, time it --------------------------------


async def prepare(dsn: str, name: str, jobs: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if name in ("pgfirst", "raw-jobs"):
            await conn.execute("TRUNCATE jobs")
            await conn.execute(
                "INSERT INTO jobs (name, max_attempts) "
                "SELECT 'bench.noop', 1 FROM generate_series(1, $1)",
                jobs,
            )
            await conn.execute("ANALYZE jobs")
        elif name == "pgqueuer":
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            queries = Queries(AsyncpgDriver(conn))
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await queries.install()
            await conn.execute("TRUNCATE pgqueuer")
            await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
            await conn.execute("ANALYZE pgqueuer")
        else:
            await conn.execute(RAW_TABLE)
            await conn.execute("TRUNCATE bench_raw_jobs")
            await conn.execute(
                "INSERT INTO bench_raw_jobs (name) SELECT 'noop' FROM generate_series(1, $1)",
                jobs,
            )
            await conn.execute("ANALYZE bench_raw_jobs")
    finally:
        await conn.close()


async def empty(dsn: str, name: str) -> None:
    """Empty the contender's table and leave statistics that say so."""
    conn = await asyncpg.connect(dsn)
    try:
        if name == "pgqueuer":
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await Queries(AsyncpgDriver(conn)).install()
        table = {"pgqueuer": "pgqueuer", "raw": "bench_raw_jobs"}.get(name, "jobs")
        if name == "raw":
            await conn.execute(RAW_TABLE)
        await conn.execute(f"TRUNCATE {table}")
        await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


async def enqueue_burst(dsn: str, name: str, jobs: int) -> float:
    """Enqueue ``jobs`` in one commit, no ANALYZE; the wall-clock time of the commit."""
    conn = await asyncpg.connect(dsn)
    try:
        if name == "pgqueuer":
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            await Queries(AsyncpgDriver(conn)).enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
        elif name == "raw":
            await conn.execute(
                "INSERT INTO bench_raw_jobs (name) SELECT 'noop' FROM generate_series(1, $1)", jobs
            )
        else:
            # With the wake-up pgfirst's enqueue sends (its workers poll only as a
            # fallback, every JOBS_POLL_INTERVAL); raw-jobs polls every 10 ms anyway.
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO jobs (name, max_attempts) "
                    "SELECT 'bench.noop', 1 FROM generate_series(1, $1)",
                    jobs,
                )
                await conn.execute("SELECT pg_notify('pgfirst_jobs', 'default')")
        return time.time()
    finally:
        await conn.close()


def run_child(
    dsn: str, name: str, jobs: int, *, burst: bool = False, idle: float = 6.0
) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench_drain", "--child", name, "--jobs", str(jobs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"},
    )
    assert child.stdin is not None
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError(f"{name}: the worker process did not start")
    child.stdin.write("go\n")
    child.stdin.flush()
    committed = 0.0
    if burst:
        time.sleep(idle)  # the worker polls (and plans its claim) on an empty queue
        committed = asyncio.run(enqueue_burst(dsn, name, jobs))
    report: dict[str, float] = json.loads(child.stdout.readline())
    child.wait(timeout=60)
    if burst:
        report["seconds"] = report["done_at"] - committed
    return report


def measure(
    dsn: str,
    jobs: int,
    repeats: int,
    names: list[str],
    *,
    burst: bool = False,
    idle: float = 6.0,
) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            asyncio.run(empty(dsn, name) if burst else prepare(dsn, name, jobs))
            report = run_child(dsn, name, jobs, burst=burst, idle=idle)
            runs[name].append(
                {
                    "drain jobs/s": jobs / report["seconds"],
                    "worker CPU µs/job": report["cpu_seconds"] / jobs * 1e6,
                }
            )
    summary: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        if not results:
            continue
        summary[name] = {m: statistics.median(r[m] for r in results) for m in results[0]}
        # The spread of the repeats, so that a ratio can be read against the noise.
        summary[name]["slowest jobs/s"] = min(r["drain jobs/s"] for r in results)
        summary[name]["fastest jobs/s"] = max(r["drain jobs/s"] for r in results)
    return summary


def report(
    results: dict[str, dict[str, float]], jobs: int, repeats: int, *, burst: bool = False
) -> None:
    setup = "a burst onto idle workers, not analysed" if burst else "analysed"
    print(f"drain by a separate worker process, {jobs:,} no-op jobs, {setup}, medians of {repeats}")
    names = list(results)
    print(f"{'metric':<22}" + "".join(f"{name:>12}" for name in names))
    metrics = ["drain jobs/s", "slowest jobs/s", "fastest jobs/s"]
    for metric in metrics if burst else [*metrics, "worker CPU µs/job"]:
        print(f"{metric:<22}" + "".join(f"{results[n][metric]:>12.1f}" for n in names))
    if "pgfirst" in results:
        mine = results["pgfirst"]["drain jobs/s"]
        for other in (n for n in names if n != "pgfirst"):
            print(f"pgfirst / {other}: {mine / results[other]['drain jobs/s']:.2f}x")


# --- the children: one worker each -----------------------------------------------------------


async def child_pgfirst(jobs: int) -> Any:
    from app.config import load_settings
    from app.jobs import job, jobs_in
    from app.jobs.worker import Worker
    from app.services import open_services

    remaining = jobs
    done = asyncio.Event()

    @job(name="bench.noop", max_attempts=1)
    async def noop() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    namespace = type(sys)("bench_drain_jobs")
    namespace.noop = noop  # type: ignore[attr-defined]
    settings = load_settings(env="test", jobs_poll_interval=1.0)
    async with open_services(settings, extra_jobs=jobs_in(namespace)) as services:
        worker = Worker(services.jobs, concurrency=10)
        await ready()
        began, cpu = time.perf_counter(), time.process_time()
        runner = asyncio.create_task(worker.run())
        await done.wait()
        outcome = finished(began, cpu)
        worker.stop()
        await runner
    return outcome


async def child_pgqueuer(jobs: int) -> Any:
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    remaining = jobs
    done = asyncio.Event()
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    await ready()
    began, cpu = time.perf_counter(), time.process_time()
    runner = asyncio.create_task(pgq.run(batch_size=100))
    await done.wait()
    outcome = finished(began, cpu)
    pgq.shutdown.set()
    await asyncio.wait_for(runner, 30)
    await conn.close()
    return outcome


async def child_raw(
    jobs: int,
    *,
    claim: str = RAW_CLAIM,
    claim_args: tuple[Any, ...] = (),
    done_sql: str = RAW_DONE,
) -> Any:
    remaining = jobs
    done = asyncio.Event()

    async def handler(args: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    conns = [await asyncpg.connect(os.environ["DATABASE_URL"]) for _ in range(10)]

    async def loop(conn: asyncpg.Connection) -> None:
        while not done.is_set():
            async with conn.transaction():
                rows = await conn.fetch(claim, *claim_args)
                for row in rows:
                    await handler(row["args"])
                if rows:
                    await conn.execute(done_sql, [row["id"] for row in rows])
            if not rows:
                await asyncio.sleep(0.01)

    await ready()
    began, cpu = time.perf_counter(), time.process_time()
    loops = [asyncio.create_task(loop(conn)) for conn in conns]
    await done.wait()
    outcome = finished(began, cpu)
    await asyncio.gather(*loops)
    for conn in conns:
        await conn.close()
    return outcome


async def ready() -> None:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def finished(began: float, cpu: float) -> dict[str, float]:
    return {
        "seconds": time.perf_counter() - began,
        "cpu_seconds": time.process_time() - cpu,
        "done_at": time.time(),
    }


async def child_raw_jobs(jobs: int) -> Any:
    return await child_raw(
        jobs, claim=RAW_JOBS_CLAIM, claim_args=(["default"],), done_sql=RAW_JOBS_DONE
    )


CHILDREN = {
    "pgfirst": child_pgfirst,
    "pgqueuer": child_pgqueuer,
    "raw": child_raw,
    "raw-jobs": child_raw_jobs,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--burst", action="store_true", help="jobs arrive at idle workers")
    parser.add_argument("--idle", type=float, default=6.0, help="seconds idle before a burst")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        outcome = uvloop.run(CHILDREN[options.child](options.jobs))
        print(json.dumps(outcome), flush=True)
        return
    names = [name for name in options.only.split(",") if name]
    with postgres() as dsn:
        results = measure(
            dsn, options.jobs, options.repeats, names, burst=options.burst, idle=options.idle
        )
        report(results, options.jobs, options.repeats, burst=options.burst)


if __name__ == "__main__":
    main()
