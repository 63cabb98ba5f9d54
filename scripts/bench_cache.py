"""Cache: L1, the Postgres backend and the Redis backend, same process, same run.

    uv run python -m scripts.bench_cache [--repeats 3] [--keys 100000] [--ops 20000]

Starts a throwaway embedded PostgreSQL and a redis-server (or uses DATABASE_URL/REDIS_URL),
runs on uvloop (as the app does) and, for each tier in alternation:

- fills ``--keys`` keys with 1 KiB values;
- get (hit) and set of random keys: sequential (p50/p99 per call, ops/s) and from 32
  concurrent tasks (ops/s, p50/p99) — the Postgres backend on its own 10 connections
  (CACHE_POOL_SIZE=10), redis-py on its connection pool;
- ``l1``: the same ``cache.get`` on 1,000 hot keys, served from the in-process tier;
- invalidation delay: two open services (as two processes would have them, each with its
  own notifier and L1); the time from a ``set`` on one to the other hearing it, per backend;
- HTTP: the app served twice (`app serve`, one worker) — with its caches on (defaults) and
  off (CACHE_AUTH_TTL_SECONDS=0, CACHE_LIST_TTL_SECONDS=0) — `wrk -t2 -c32` on the
  authenticated GET /api/tasks, alternating (skip with ``--no-http``).

Medians of the repeats; ratios against the Redis backend in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvloop

from app.cache import Cache
from app.config import load_settings
from app.services import open_services
from scripts.bench_http import ensure_wrk, prepare, serve, wrk
from scripts.benchkit import percentile, services

VALUE = {"payload": "x" * 1000}  # ~1 KiB of JSON
HOT_KEYS = 1_000
CONCURRENCY = 32


@asynccontextmanager
async def open_cache(dsn: str, redis_url: str, backend: str, *, l1: bool) -> AsyncIterator[Cache]:
    """The Cache of services of its own, as one app process has it (own notifier, L1)."""
    settings = load_settings(
        env="test",
        database_url=dsn,
        redis_url=redis_url,
        cache_backend=backend,
        cache_pool_size=10,
        cache_l1_max_entries=HOT_KEYS * 2 if l1 else 0,
        cache_l1_ttl_seconds=600,
        cache_timeout_seconds=5,
        log_level="WARNING",
    )
    async with open_services(settings) as services:
        yield services.cache


async def fill(cache: Cache, keys: int) -> None:
    for start in range(0, keys, 1_000):
        await cache.set_many({f"k:{n}": VALUE for n in range(start, min(keys, start + 1_000))})


async def sequential(
    call: Callable[[int], Awaitable[Any]], ops: int, keys: int
) -> dict[str, float]:
    picks = [random.randrange(keys) for _ in range(ops)]
    samples = []
    began = time.perf_counter()
    for n in picks:
        t0 = time.perf_counter()
        await call(n)
        samples.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    return {
        "p50_us": percentile(samples, 0.5) * 1e6,
        "p99_us": percentile(samples, 0.99) * 1e6,
        "ops": ops / elapsed,
    }


async def concurrent(
    call: Callable[[int], Awaitable[Any]], ops: int, keys: int
) -> dict[str, float]:
    samples: list[float] = []
    per_task = ops // CONCURRENCY

    async def run() -> None:
        for _ in range(per_task):
            n = random.randrange(keys)
            t0 = time.perf_counter()
            await call(n)
            samples.append(time.perf_counter() - t0)

    began = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - began
    return {
        "p50_us": percentile(samples, 0.5) * 1e6,
        "p99_us": percentile(samples, 0.99) * 1e6,
        "ops": per_task * CONCURRENCY / elapsed,
    }


async def tier(dsn: str, redis_url: str, name: str, keys: int, ops: int) -> dict[str, Any]:
    backend = "redis" if name == "redis" else "postgres"
    async with open_cache(dsn, redis_url, backend, l1=name == "l1") as cache:
        results: dict[str, Any] = {}
        if name == "l1":
            await cache.set_many({f"hot:{n}": VALUE for n in range(HOT_KEYS)})
            for n in range(HOT_KEYS):
                await cache.get(f"hot:{n}")  # into L1
            backend_hits = cache.reads.get(("hot", "hit"), 0)

            async def get_hot(n: int) -> Any:
                return await cache.get(f"hot:{n}")

            results["get"] = await sequential(get_hot, ops * 5, HOT_KEYS)
            results["get@32"] = await concurrent(get_hot, ops * 5, HOT_KEYS)
            assert cache.reads.get(("hot", "hit"), 0) == backend_hits, "L1 missed"
            return results
        await fill(cache, keys)

        async def get(n: int) -> Any:
            value = await cache.get(f"k:{n}")
            assert value is not None
            return value

        async def set_(n: int) -> Any:
            return await cache.set(f"k:{n}", VALUE, ttl=3600)

        results["get"] = await sequential(get, ops, keys)
        results["set"] = await sequential(set_, ops, keys)
        results["get@32"] = await concurrent(get, ops, keys)
        results["set@32"] = await concurrent(set_, ops, keys)
        return results


async def invalidation_delay(dsn: str, redis_url: str, backend: str, samples: int) -> list[float]:
    delays = []
    async with (
        open_cache(dsn, redis_url, backend, l1=True) as writer,
        open_cache(dsn, redis_url, backend, l1=True) as reader,
    ):
        for n in range(samples):
            key = f"inv:{n % 10}"
            await writer.set(key, n)
            # Polling on purpose: the measure is when the reader's state changes.
            while await reader.get(key) != n:  # noqa: ASYNC110 - settle: value in reader's L1
                await asyncio.sleep(0.001)
            heard = reader.invalidations_received
            began = time.perf_counter()
            await writer.set(key, n + 1)
            while reader.invalidations_received == heard:  # noqa: ASYNC110
                await asyncio.sleep(0)
            delays.append(time.perf_counter() - began)
    return delays


def http(dsn: str, repeats: int, duration: int) -> dict[str, list[dict[str, object]]]:
    ensure_wrk()
    results: dict[str, list[dict[str, object]]] = {"cache on": [], "cache off": []}
    token = ""
    for repeat in range(repeats):
        for label in ("cache on", "cache off"):
            # "cache off": no cached sessions or list pages (ETags still work).
            off = {"CACHE_AUTH_TTL_SECONDS": "0", "CACHE_LIST_TTL_SECONDS": "0"}
            server, base = serve(dsn, **({} if label == "cache on" else off))
            try:
                if not token:
                    token = prepare(base)
                else:
                    wait_ready(base)
                auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                results[label].append(wrk(f"{base}/api/tasks", duration, auth))
            finally:
                server.terminate()
                server.wait(timeout=30)
        print(
            f"  http repeat {repeat + 1}: "
            + ", ".join(f"{label} {runs[-1]['rps']:.0f} req/s" for label, runs in results.items())
        )
    return results


def wait_ready(base: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit("server did not become ready")


def median_of(runs: list[dict[str, Any]], op: str, field: str) -> float:
    return float(statistics.median(run[op][field] for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--no-http", action="store_true")
    options = parser.parse_args()

    with services(durable=True) as (dsn, redis_url):
        tiers = ("l1", "postgres", "redis")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in tiers}
        delays: dict[str, list[float]] = {"postgres": [], "redis": []}
        for repeat in range(options.repeats):
            for name in tiers:
                runs[name].append(uvloop.run(tier(dsn, redis_url, name, options.keys, options.ops)))
            for backend in delays:
                delays[backend] += uvloop.run(invalidation_delay(dsn, redis_url, backend, 200))
            print(f"  repeat {repeat + 1} done")
        web = None if options.no_http else http(dsn, options.repeats, options.duration)

    print(
        f"\n1 KiB values, {options.keys:,} keys, {options.ops:,} ops per measure, uvloop, "
        f"medians of {options.repeats}"
    )
    print(f"{'tier':<10}{'op':<8}{'p50 µs':>10}{'p99 µs':>10}{'ops/s':>12}")
    for name in tiers:
        for op in runs[name][0]:
            print(
                f"{name:<10}{op:<8}{median_of(runs[name], op, 'p50_us'):>10.1f}"
                f"{median_of(runs[name], op, 'p99_us'):>10.1f}"
                f"{median_of(runs[name], op, 'ops'):>12,.0f}"
            )
    pg, rd, l1 = runs["postgres"], runs["redis"], runs["l1"]
    print(
        "\nPostgres/Redis: get p50 "
        f"{median_of(pg, 'get', 'p50_us') / median_of(rd, 'get', 'p50_us'):.2f}x (lower is "
        f"better), set p50 {median_of(pg, 'set', 'p50_us') / median_of(rd, 'set', 'p50_us'):.2f}x, "
        f"get/s at 32 {median_of(pg, 'get@32', 'ops') / median_of(rd, 'get@32', 'ops'):.2f}x "
        f"(higher is better)"
    )
    print(
        f"L1 hot-key get p50 {median_of(l1, 'get', 'p50_us'):.2f} µs; get/s at 32 "
        f"{median_of(l1, 'get@32', 'ops') / median_of(rd, 'get@32', 'ops'):.1f}x Redis"
    )
    for backend, values in delays.items():
        print(
            f"invalidation delay ({backend}): p50 {percentile(values, 0.5) * 1e3:.2f} ms, "
            f"p99 {percentile(values, 0.99) * 1e3:.2f} ms, max {max(values) * 1e3:.2f} ms "
            f"({len(values)} writes)"
        )
    if web:
        print(f"\nGET /api/tasks, wrk -t2 -c32 -d{options.duration}s, one worker:")
        for label, results in web.items():
            rps = statistics.median(float(r["rps"]) for r in results)  # type: ignore[arg-type]
            p50 = statistics.median(float(r["p50"]) for r in results)  # type: ignore[arg-type]
            print(f"  {label:<10}{rps:>8.0f} req/s   p50 {p50:.1f} ms   {results[-1]['statuses']}")
        on = statistics.median(float(r["rps"]) for r in web["cache on"])  # type: ignore[arg-type]
        off = statistics.median(float(r["rps"]) for r in web["cache off"])  # type: ignore[arg-type]
        print(f"  cache on / off: {on / off:.2f}x")


if __name__ == "__main__":
    main()
