"""Jobs: bulk enqueue, drain and pickup latency — pgfirst, pgqueuer and procrastinate.

    uv run --group bench python -m scripts.bench_jobs [--jobs 20000] [--repeats 3]
        [--only pgfirst,pgqueuer,procrastinate] [--loop uvloop|asyncio]
        [--procrastinate-concurrency 10] [--outsider]

``--outsider`` first runs the drain as an outsider measures it (scripts/bench_drain.py:
one worker process per queue, on an analysed table, beside a raw asyncpg loop), then the
in-process measures below.

On one throwaway embedded PostgreSQL (fsync on, synchronous commit), in one process and
one event loop (uvloop unless ``--loop asyncio``), each queue in turn, repeats alternating:

- bulk enqueue of ``--jobs`` no-op jobs in one call (pgfirst ``enqueue_many``, pgqueuer
  ``Queries.enqueue`` with lists, procrastinate ``batch_defer_async``);
- drain: one worker empties the queue, jobs/s (pgfirst: concurrency 10, claim batch 100;
  pgqueuer: batch size 100; procrastinate: ``run_worker_async`` with
  ``--procrastinate-concurrency`` jobs at once);
- pickup latency: the idle worker, 200 jobs enqueued one at a time 20 ms apart; from the
  enqueue call (its commit waits for the disk) to the handler starting, p50 and p99.

pgqueuer and procrastinate are installed only in the `bench` dependency group; each
applies its own schema to the same database; without them (a plain ``.venv``) the script
measures pgfirst alone: ``.venv/bin/python -m scripts.bench_jobs --only pgfirst``. Medians
of the repeats; ratios are pgfirst's figure over the other's (for latencies, below 1 is
better for pgfirst).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import uvloop

from app.config import load_settings
from app.jobs import enqueue, enqueue_many, job, jobs_in
from app.jobs.worker import Worker
from app.services import open_services
from scripts import bench_drain
from scripts.benchkit import percentile, postgres

PICKUPS = 200
# procrastinate's one worker: jobs at once (docs/benchmarks.md has the sweep).
PROCRASTINATE_CONCURRENCY = 10
_pickup_started: list[float] = []
_picked = asyncio.Event()
_remaining = 0
_all_done = asyncio.Event()


@job(name="bench.noop", max_attempts=1)
async def noop() -> None:
    global _remaining
    _remaining -= 1
    if _remaining == 0:
        _all_done.set()


@job(name="bench.pickup", max_attempts=1)
async def pickup() -> None:
    _pickup_started.append(time.perf_counter())
    _picked.set()


async def pickup_latencies(
    send: Callable[[], Awaitable[Any]], picked: asyncio.Event, started: list[float]
) -> list[float]:
    """Enqueue one job at a time, 20 ms apart, to an idle worker: enqueue → handler start."""
    latencies = []
    for _ in range(PICKUPS):
        await asyncio.sleep(0.02)
        picked.clear()
        sent = time.perf_counter()
        await send()
        await picked.wait()
        latencies.append(started[-1] - sent)
    return latencies


async def run_pgfirst(dsn: str, jobs: int) -> dict[str, float]:
    global _remaining
    settings = load_settings(
        env="test", database_url=dsn, jobs_poll_interval=1.0, db_pool_max=12, log_level="WARNING"
    )
    # The bench's own job kinds, from this module whatever name it runs under (__main__).
    bench_jobs = jobs_in(sys.modules[__name__])
    async with open_services(settings, dsn=dsn, extra_jobs=bench_jobs) as services:
        async with services.db.acquire() as conn:
            await conn.execute("TRUNCATE jobs")
        began = time.perf_counter()
        await enqueue_many("bench.noop", [{}] * jobs)
        enqueue_rate = jobs / (time.perf_counter() - began)

        _remaining = jobs
        _all_done.clear()
        worker = Worker(services.jobs, concurrency=10)
        began = time.perf_counter()
        task = asyncio.create_task(worker.run())
        await _all_done.wait()
        drain_rate = jobs / (time.perf_counter() - began)

        _pickup_started.clear()
        latencies = await pickup_latencies(
            lambda: enqueue("bench.pickup"), _picked, _pickup_started
        )
        worker.stop()
        await task
    return {
        "bulk enqueue jobs/s": enqueue_rate,
        "drain jobs/s": drain_rate,
        "pickup p50 ms": percentile(latencies, 0.5) * 1000,
        "pickup p99 ms": percentile(latencies, 0.99) * 1000,
    }


async def run_pgqueuer(dsn: str, jobs: int) -> dict[str, float] | None:
    try:
        from pgqueuer import PgQueuer
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.models import Job
        from pgqueuer.queries import Queries
    except ImportError:
        return None
    conn = await asyncpg.connect(dsn)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    with contextlib.suppress(asyncpg.DuplicateObjectError):
        await queries.install()
    await conn.execute("TRUNCATE pgqueuer")

    began = time.perf_counter()
    await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
    enqueue_rate = jobs / (time.perf_counter() - began)

    remaining = jobs
    done = asyncio.Event()
    pickups: list[float] = []
    picked = asyncio.Event()
    worker_conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(worker_conn))

    @pgq.entrypoint("noop")
    async def noop_entry(job: Job) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    @pgq.entrypoint("pickup")
    async def pickup_entry(job: Job) -> None:
        pickups.append(time.perf_counter())
        picked.set()

    began = time.perf_counter()
    runner = asyncio.create_task(pgq.run(batch_size=100))
    await done.wait()
    drain_rate = jobs / (time.perf_counter() - began)

    latencies = await pickup_latencies(
        lambda: queries.enqueue(["pickup"], [None], [0]), picked, pickups
    )
    pgq.shutdown.set()
    await asyncio.wait_for(runner, 30)
    await worker_conn.close()
    await conn.close()
    return {
        "bulk enqueue jobs/s": enqueue_rate,
        "drain jobs/s": drain_rate,
        "pickup p50 ms": percentile(latencies, 0.5) * 1000,
        "pickup p99 ms": percentile(latencies, 0.99) * 1000,
    }


async def run_procrastinate(
    dsn: str, jobs: int, concurrency: int = PROCRASTINATE_CONCURRENCY
) -> dict[str, float] | None:
    try:
        import procrastinate
    except ImportError:
        return None
    # It warns that an App built in __main__ cannot be imported by its CLI: not used here.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    connector = procrastinate.PsycopgConnector(
        conninfo=dsn, min_size=concurrency + 2, max_size=concurrency + 2
    )
    app = procrastinate.App(connector=connector)
    remaining = jobs
    done = asyncio.Event()
    pickups: list[float] = []
    picked = asyncio.Event()

    @app.task(name="noop")
    async def noop_task() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    @app.task(name="pickup")
    async def pickup_task() -> None:
        pickups.append(time.perf_counter())
        picked.set()

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('procrastinate_jobs')") is None:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
        await conn.execute("TRUNCATE procrastinate_jobs CASCADE")
    finally:
        await conn.close()

    async with app.open_async():
        # batch_defer_async: its documented bulk path, one INSERT for all the jobs.
        began = time.perf_counter()
        await noop_task.batch_defer_async(*([{}] * jobs))
        enqueue_rate = jobs / (time.perf_counter() - began)

        began = time.perf_counter()
        runner = asyncio.create_task(
            app.run_worker_async(
                concurrency=concurrency,
                install_signal_handlers=False,
                delete_jobs="never",
            )
        )
        await done.wait()
        drain_rate = jobs / (time.perf_counter() - began)

        latencies = await pickup_latencies(pickup_task.defer_async, picked, pickups)
        runner.cancel()  # its documented way to stop a worker run as a task: graceful
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return {
        "bulk enqueue jobs/s": enqueue_rate,
        "drain jobs/s": drain_rate,
        "pickup p50 ms": percentile(latencies, 0.5) * 1000,
        "pickup p99 ms": percentile(latencies, 0.99) * 1000,
    }


CONTENDERS: dict[str, Callable[[str, int], Awaitable[dict[str, float] | None]]] = {
    "pgfirst": run_pgfirst,
    "pgqueuer": run_pgqueuer,
    "procrastinate": run_procrastinate,
}


async def measure(
    dsn: str, jobs: int, repeats: int, names: list[str], procrastinate_concurrency: int
) -> None:
    contenders = {
        **CONTENDERS,
        "procrastinate": functools.partial(
            run_procrastinate, concurrency=procrastinate_concurrency
        ),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            outcome = await contenders[name](dsn, jobs)
            if outcome is not None:
                results[name].append(outcome)
    present = [name for name in names if results[name]]
    others = [name for name in present if name != "pgfirst"]
    print(f"jobs: {jobs:,} no-op jobs, medians of {repeats}")
    header = f"{'metric':<22}" + "".join(f"{name:>15}" for name in present)
    print(header + "".join(f"{'pgfirst/' + name[:6]:>17}" for name in others))
    for metric in results[present[0]][0]:
        values: dict[str, Any] = {
            name: statistics.median(r[metric] for r in results[name]) for name in present
        }
        line = f"{metric:<22}" + "".join(f"{values[n]:>15.1f}" for n in present)
        if "pgfirst" in values:
            line += "".join(f"{values['pgfirst'] / values[n]:>17.2f}" for n in others)
        print(line)
    missing = [name for name in names if not results[name]]
    if missing:
        print(f"not installed: {', '.join(missing)} (run with `uv run --group bench`)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="comma-separated: " + ", ".join(CONTENDERS)
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop for every contender (uvloop: what `app worker` and uvicorn run on)",
    )
    parser.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=PROCRASTINATE_CONCURRENCY,
        help="jobs its one worker runs at once",
    )
    parser.add_argument(
        "--outsider",
        action="store_true",
        help="also drain with one worker process per queue on an analysed table, beside a "
        "raw asyncpg loop (scripts/bench_drain.py)",
    )
    options = parser.parse_args()
    names = [name for name in options.only.split(",") if name]
    with postgres() as dsn:
        if options.outsider:
            separate = [name for name in (*names, "raw") if name in bench_drain.CONTENDERS]
            drained = bench_drain.measure(dsn, options.jobs, options.repeats, separate)
            bench_drain.report(drained, options.jobs, options.repeats)
            print()
        run = measure(dsn, options.jobs, options.repeats, names, options.procrastinate_concurrency)
        if options.loop == "uvloop":
            uvloop.run(run)
        else:
            asyncio.run(run)


if __name__ == "__main__":
    main()
