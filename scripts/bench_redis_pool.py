"""The Redis client's pool: redis-py's two pools against pgfirst's WaitingConnectionPool.

    .venv/bin/python -m scripts.bench_redis_pool [--repeats 3] [--ops 30000]
        [--limit 100] [--concurrency 1,32,300]

A redis-server from PATH (or REDIS_URL), uvloop, one process. For each concurrency, the
three pools in alternation, each with ``--limit`` connections at most: ``--ops`` GETs of one
key spread over that many tasks. Reported: commands/s, client CPU per command, p50/p99 of a
command, and how many failed. ``redis-py`` is ``Redis.from_url`` (its ConnectionPool: past
the limit a command raises MaxConnectionsError), ``blocking`` redis-py's
BlockingConnectionPool (waits, with a Condition on every acquire), ``pgfirst``
app/db/redis_pool.py (waits only when the pool is full). Medians of the repeats; the
ratios are pgfirst's figure over the others'.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop
from redis.asyncio import BlockingConnectionPool, Redis

from app.db.redis_pool import SOCKET_TIMEOUT_SECONDS, open_redis
from scripts.benchkit import percentile, redis

POOLS = ("redis-py", "blocking", "pgfirst")
KEY = "bench-redis-pool"


def client(kind: str, url: str, limit: int) -> Redis:
    timeouts = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
    }
    if kind == "redis-py":
        return Redis.from_url(url, max_connections=limit, **timeouts)
    if kind == "blocking":
        pool = BlockingConnectionPool.from_url(url, max_connections=limit, timeout=5.0, **timeouts)
        return Redis.from_pool(pool)
    return open_redis(url, max_connections=limit, timeout=5.0)


async def measure(kind: str, url: str, limit: int, concurrency: int, ops: int) -> dict[str, float]:
    redis_client = client(kind, url, limit)
    await redis_client.set(KEY, b"v" * 100)
    latencies: list[float] = []
    failed = 0

    async def user(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            began = time.perf_counter()
            try:
                await redis_client.get(KEY)
            except Exception:
                failed += 1
                continue
            latencies.append(time.perf_counter() - began)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(user(ops // concurrency) for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    await redis_client.aclose()
    done = len(latencies)
    return {
        "commands/s": done / elapsed,
        "client CPU µs/command": cpu / max(done, 1) * 1e6,
        "p50 ms": percentile(latencies, 0.5) * 1000 if latencies else float("nan"),
        "p99 ms": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        "failed": float(failed),
    }


async def main(options: argparse.Namespace) -> None:
    with redis() as url:
        for concurrency in [int(n) for n in options.concurrency.split(",")]:
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in POOLS}
            for _ in range(options.repeats):
                for kind in POOLS:
                    runs[kind].append(
                        await measure(kind, url, options.limit, concurrency, options.ops)
                    )
            print(
                f"\n{concurrency} concurrent, {options.ops:,} GETs, at most {options.limit} "
                f"connections, medians of {options.repeats}"
            )
            print(f"{'metric':24}" + "".join(f"{kind:>12}" for kind in POOLS))
            medians = {
                kind: {key: statistics.median(run[key] for run in results) for key in results[0]}
                for kind, results in runs.items()
            }
            for key in medians["pgfirst"]:
                print(f"{key:24}" + "".join(f"{medians[kind][key]:12.2f}" for kind in POOLS))
            rate = medians["pgfirst"]["commands/s"]
            for kind in ("redis-py", "blocking"):
                other = medians[kind]["commands/s"]
                ratio = f"{rate / other:.2f}x" if other else "-"
                print(f"pgfirst / {kind} commands/s: {ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ops", type=int, default=30_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--concurrency", default="1,32,300")
    uvloop.run(main(parser.parse_args()))
