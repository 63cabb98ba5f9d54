"""Drive pgfirst until chosen signals fire, flip what the advisor says, and show the effect.

    .venv/bin/python -m scripts.loadtest [--scenario backlog,hot_key,slow_query,connections,errors]

Starts a throwaway embedded PostgreSQL and a redis-server (scripts/benchkit.py; DATABASE_URL
and REDIS_URL are used instead when set), and `app serve` in a subprocess (no inline
worker). Each scenario is one function ``async def scenario(run: Run) -> None``: it prints
the advisor's reading of its signals before, once the condition is made, and after the
flip. The advisor is read as the ``pgfirst.sample_signals`` job reads it (``measure(...,
record=True)``), three times in a row so hysteresis lets the flag through.

To finish in minutes the web process reports every 2 s over a 60 s window
(SIGNAL_REPORT_SECONDS, SIGNAL_WINDOW_SECONDS); every threshold keeps its default.

- backlog: 20,000 jobs and no worker → jobs.queue_depth, jobs.oldest_wait_seconds; flip:
  two `app worker` processes; read again once drained.
- hot_key: one user's requests for a minute (every request reads its session from the
  cache) → cache.hot_keys; with L1 on it says L1 absorbs the key, with L1 off
  (CACHE_L1_MAX_ENTRIES=0) it calls for CACHE_BACKEND=redis; flip: the app on Redis, the
  same minute of load, throughput and the database's statement rate compared.
- slow_query: an unindexed filter over 2M rows, 100 calls → db.slow_queries; flip:
  CREATE INDEX, the statement's statistics reset, 100 calls again.
- connections: 145 idle connections (of 200) → db.connections with what blocks
  DB_POOL_MODE=pgbouncer; flip: the connections closed.
- errors: a transaction holding a lock on tasks makes every task list time out (the app
  runs with DB_COMMAND_TIMEOUT=2) → http.error_rate; flip: the holder rolled back; read
  again after the window.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx

from app.config import Settings, load_settings
from app.services import Services, open_services
from app.signals import Report, measure
from app.signals.model import format_number
from scripts.benchkit import free_port, percentile, postgres, redis

APP_ENV = {
    "ENV": "development",
    "LOG_LEVEL": "WARNING",
    "JOBS_INLINE_WORKER": "false",
    "SECRET_KEY": "loadtest-secret-key-that-is-long-enough-0123456789",
    "SIGNAL_REPORT_SECONDS": "2",
    "SIGNAL_WINDOW_SECONDS": "60",
    "MAILER": "memory",
    "DB_COMMAND_TIMEOUT": "2",
}
PASSWORD = "correct horse battery staple 42"  # noqa: S105 (throwaway accounts)


@dataclass
class Run:
    dsn: str
    redis_url: str
    services: Services
    base_url: str = ""

    @property
    def settings(self) -> Settings:
        return self.services.settings


# --- plumbing -------------------------------------------------------------------------------


def env_for(dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **APP_ENV, "DATABASE_URL": dsn, **extra}


@asynccontextmanager
async def app_server(dsn: str, **extra: str) -> AsyncIterator[str]:
    port = free_port()
    env = env_for(dsn, PORT=str(port), HOST="127.0.0.1", **extra)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield base
    finally:
        process.terminate()
        await process.wait()


async def workers(dsn: str, count: int) -> float:
    """Run ``count`` `app worker --burst` processes until the queue is empty; seconds taken."""
    started = time.perf_counter()
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--burst",
            env=env_for(dsn),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    await asyncio.gather(*(p.wait() for p in processes))
    return time.perf_counter() - started


async def read(run: Run, title: str, keys: list[str], *, samples: int = 1) -> Report:
    """Sample like the periodic job ``samples`` times (2 s apart) and print ``keys``."""
    await asyncio.sleep(run.settings.signal_report_seconds + 0.5)  # a fresh process report
    report = await measure(run.services.db, run.settings, record=True)
    for _ in range(samples - 1):
        await asyncio.sleep(2)
        report = await measure(run.services.db, run.settings, record=True)
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(
        f"\n[{stamp}] {title} — stage {report.stage.number} ({report.stage.name}): "
        + "; ".join(report.stage.reasons)
    )
    for item in report.signals:
        if item.key in keys:
            value = "-" if item.value is None else f"{format_number(item.value)} {item.unit}"
            print(f"  {item.status.upper():8} {item.key:26} {value:>18}  {item.recommendation}")
            if item.flag:
                print(f"  {'':8} flag to flip: {item.flag}")
            for line in item.details[:3]:
                print(f"  {'':36}{line}")
    for line in report.advice:
        print(f"  advice: {line}")
    return report


async def hammer(
    base: str, path: str, headers: dict[str, str], seconds: float, concurrency: int
) -> list[float]:
    """Closed-loop GETs for ``seconds``; latencies in ms (errors are counted by the app)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:

        async def loop() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.get(path)
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return latencies


def summary(latencies: list[float], seconds: float) -> str:
    return (
        f"{len(latencies) / seconds:,.0f} req/s, p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms"
    )


async def user(base: str, email: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base) as client:
        body = {"email": email, "password": PASSWORD}
        await client.post("/api/auth/signup", json=body)
        token = (await client.post("/api/auth/login", json=body)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def statements_per_second(dsn: str, work: Callable[[], Awaitable[object]]) -> float:
    """Statements the database ran per second while ``work`` ran (pg_stat_statements)."""
    calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
    conn = await asyncpg.connect(dsn)
    try:
        before, started = await conn.fetchval(calls), time.perf_counter()
        await work()
        return float(await conn.fetchval(calls) - before) / (time.perf_counter() - started)
    finally:
        await conn.close()


# --- scenarios ------------------------------------------------------------------------------


async def backlog(run: Run) -> None:
    keys = ["jobs.queue_depth", "jobs.oldest_wait_seconds"]
    await read(run, "backlog: before", keys)
    await run.services.jobs.enqueue_many("pgfirst.prune_jobs", [{}] * 20_000)
    await asyncio.sleep(run.settings.signal_job_wait_warn_seconds)
    await read(run, "backlog: 20,000 jobs, no worker", keys, samples=3)
    took = await workers(run.dsn, 2)
    print(f"\n  flipped: two `app worker --burst` processes drained the queue in {took:.1f} s")
    await read(run, "backlog: after the workers", keys)


async def hot_key(run: Run) -> None:
    keys = ["cache.hot_keys", "cache.hit_ratio", "http.latency_p99"]
    await read(run, "hot key: before", keys)
    phases = [
        ("L1 on (the default), CACHE_BACKEND=postgres", {}),
        ("L1 off, CACHE_BACKEND=postgres", {"CACHE_L1_MAX_ENTRIES": "0"}),
        (
            "flipped: L1 off, CACHE_BACKEND=redis",
            {"CACHE_L1_MAX_ENTRIES": "0", "CACHE_BACKEND": "redis", "REDIS_URL": run.redis_url},
        ),
    ]
    seconds = 62.0  # reads per key are counted per full minute
    for index, (title, env) in enumerate(phases):
        # Each phase in an app process of its own: its report leaves with it.
        async with app_server(run.dsn, **env) as base:
            headers = await user(base, f"hot{index}@example.com")
            found: list[float] = []

            async def load(
                base: str = base, headers: dict[str, str] = headers, found: list[float] = found
            ) -> None:
                found.extend(await hammer(base, "/api/auth/me", headers, seconds, 8))

            rate = await statements_per_second(run.dsn, load)
            print(
                f"\n  {title}: one user's GET /api/auth/me for {seconds:.0f} s, 8 at a "
                f"time: {summary(found, seconds)}; the database ran {rate:,.0f} statements/s"
            )
            await hammer(base, "/api/auth/me", headers, 1, 1)  # the first read of a new minute
            overrides = {key.lower(): value for key, value in env.items()}
            settings = load_settings(**{**_lower(APP_ENV), "database_url": run.dsn, **overrides})
            async with open_services(settings) as services:
                phase = Run(run.dsn, run.redis_url, services, base)
                await read(phase, f"hot key: {title}", keys, samples=3)


async def slow_query(run: Run) -> None:
    keys = ["db.slow_queries"]
    query = "SELECT sum(amount) FROM loadtest_orders WHERE customer = $1"
    conn = await asyncpg.connect(run.dsn)
    try:
        await conn.execute("""
            CREATE TABLE loadtest_orders AS
            SELECT g AS id, (g::bigint * 7919 % 100000)::int AS customer,
                   (g % 1000) / 10.0 AS amount
            FROM generate_series(1, 2000000) g
        """)
        await conn.execute("VACUUM ANALYZE loadtest_orders")
        await read(run, "slow query: before", keys)
        await calls(run.dsn, query, 100)
        await read(run, "slow query: 100 calls of an unindexed filter over 2M rows", keys)
        await conn.execute("CREATE INDEX loadtest_orders_customer ON loadtest_orders (customer)")
        await conn.execute("""
            SELECT pg_stat_statements_reset(0, 0, queryid) FROM pg_stat_statements
            WHERE query LIKE 'SELECT sum(amount) FROM loadtest_orders%'
        """)
        took = await calls(run.dsn, query, 100)
        print(f"\n  flipped: CREATE INDEX on customer; 100 calls took {took:.2f} s")
        await read(run, "slow query: indexed", keys)
    finally:
        await conn.execute("DROP TABLE IF EXISTS loadtest_orders")
        await conn.close()


async def calls(dsn: str, query: str, count: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    started = time.perf_counter()
    try:

        async def one(n: int) -> None:
            await pool.fetchval(query, n)

        await asyncio.gather(*(one(n) for n in range(count)))
    finally:
        await pool.close()
    return time.perf_counter() - started


async def connections(run: Run) -> None:
    keys = ["db.connections"]
    await read(run, "connections: before", keys)
    opened = [await asyncpg.connect(run.dsn) for _ in range(145)]
    try:
        await read(run, "connections: 145 idle connections open", keys, samples=3)
    finally:
        await asyncio.gather(*(conn.close() for conn in opened))
    print("\n  flipped: the 145 connections closed (what a pooler in front would do)")
    await read(run, "connections: after", keys)


async def errors(run: Run) -> None:
    keys = ["http.error_rate", "db.idle_in_transaction"]
    await read(run, "errors: before", keys)
    headers = await user(run.base_url, "errors@example.com")
    # A transaction that took a table lock and sits idle, as a migration run by hand might:
    # every task list waits for it until DB_COMMAND_TIMEOUT (2 s here) gives up → 500.
    holder = await asyncpg.connect(run.dsn)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
    try:
        async with httpx.AsyncClient(base_url=run.base_url, headers=headers) as client:
            statuses = await asyncio.gather(
                *(client.get("/api/tasks", timeout=30) for _ in range(40))
            )
        codes = [response.status_code for response in statuses]
        failed = sum(1 for code in codes if code >= 500)
        print(f"\n  40 GET /api/tasks behind the lock: {failed} answered 5xx")
        await read(run, "errors: a lock holder blocks the task list", keys, samples=3)
    finally:
        await transaction.rollback()
        await holder.close()
    latencies = await hammer(run.base_url, "/api/tasks", headers, 5, 4)
    print(f"\n  flipped: the lock holder rolled back; /api/tasks: {summary(latencies, 5)}")
    await asyncio.sleep(run.settings.signal_window_seconds)  # the 500s leave the window
    await hammer(run.base_url, "/api/tasks", headers, 2, 2)
    await read(run, "errors: a window later", keys)


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "backlog": backlog,
    "hot_key": hot_key,
    "slow_query": slow_query,
    "connections": connections,
    "errors": errors,
}


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in env.items()}


async def main(names: list[str], dsn: str, redis_url: str) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    settings = load_settings(**{**_lower(APP_ENV), "database_url": dsn})
    async with app_server(dsn) as base, open_services(settings) as services:
        run = Run(dsn, redis_url, services, base)
        for name in names:
            print(f"\n=== {name} ===")
            await SCENARIOS[name](run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = [name.strip() for name in args.scenario.split(",")]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    with ExitStack() as stack:
        dsn = stack.enter_context(postgres(durable=False))
        redis_url = stack.enter_context(redis())
        print(f"pgfirst loadtest {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {', '.join(chosen)}")
        asyncio.run(main(chosen, dsn, redis_url))
