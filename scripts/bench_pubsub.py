"""Pub/sub: the Postgres broker against the Redis broker, same process, same run.

    uv run python -m scripts.bench_pubsub [--repeats 3] [--events 2000]

Starts a throwaway embedded PostgreSQL (or uses DATABASE_URL) and a redis-server on a free
port (or REDIS_URL). Each broker runs inside ``open_services`` with PUBSUB_BACKEND set to
it, as in the app. For each broker, in alternation, it measures:

- latency: publish -> subscriber receives, one subscriber, paced at 1,000 events/s;
- fan-out: the same with 100 subscribers on one channel (the notifier's one connection);
- throughput: 8 concurrent publishers, as fast as they go, until all events are received.

Prints medians of the repeats and the Postgres/Redis ratio (lower is better for latency,
higher for throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from app.config import Settings, load_settings
from app.pubsub import Broker, Subscription
from app.services import open_services
from scripts.benchkit import percentile, services


async def receive(subscription: Subscription, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        event = await anext(subscription)
        latencies.append(time.perf_counter() - event.payload["t"])


async def latency(broker: Broker, channel: str, events: int, subscribers: int) -> list[float]:
    subs = [await broker.subscribe([channel]) for _ in range(subscribers)]
    latencies: list[float] = []
    readers = [asyncio.create_task(receive(s, events, latencies)) for s in subs]
    interval = 1 / 1_000
    start = time.perf_counter()
    for n in range(events):
        await broker.publish(channel, {"t": time.perf_counter(), "n": n})
        delay = start + (n + 1) * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    for s in subs:
        await broker.unsubscribe(s)
    return latencies


async def throughput(broker: Broker, channel: str, events: int, publishers: int = 8) -> float:
    subscription = await broker.subscribe([channel])
    received: list[float] = []
    reader = asyncio.create_task(receive(subscription, events, received))
    per_publisher = events // publishers

    async def publish_many() -> None:
        for n in range(per_publisher):
            await broker.publish(channel, {"t": time.perf_counter(), "n": n})

    start = time.perf_counter()
    await asyncio.gather(*(publish_many() for _ in range(publishers)))
    await asyncio.wait_for(reader, 60)
    elapsed = time.perf_counter() - start
    await broker.unsubscribe(subscription)
    return (per_publisher * publishers) / elapsed


async def run_backend(settings: Settings, dsn: str, events: int, round_no: int) -> dict[str, float]:
    # The broker as the app has it: over the process's one notifier of its backend.
    async with open_services(settings, dsn=dsn) as opened:
        broker = opened.broker
        one = await latency(broker, f"bench:lat:{round_no}", events, 1)
        fan = await latency(broker, f"bench:fan:{round_no}", events // 4, 100)
        rate = await throughput(broker, f"bench:tp:{round_no}", events * 2)
    return {
        "p50 ms (1 sub)": percentile(one, 0.5) * 1000,
        "p99 ms (1 sub)": percentile(one, 0.99) * 1000,
        "p50 ms (100 subs)": percentile(fan, 0.5) * 1000,
        "p99 ms (100 subs)": percentile(fan, 0.99) * 1000,
        "events/s (8 publishers)": rate,
    }


async def measure(dsn: str, redis_url: str, repeats: int, events: int) -> None:
    results: dict[str, list[dict[str, float]]] = {"postgres": [], "redis": []}
    for round_no in range(repeats):
        for backend in ("postgres", "redis"):
            settings = load_settings(
                env="test",
                database_url=dsn,
                redis_url=redis_url,
                pubsub_backend=backend,
                pubsub_queue_size=100_000,
                db_pool_max=10,
            )
            results[backend].append(await run_backend(settings, dsn, events, round_no))

    print(f"pub/sub, medians of {repeats} runs, {events} events per latency run")
    print(f"{'metric':<26}{'postgres':>12}{'redis':>12}{'pg/redis':>10}")
    for metric in results["postgres"][0]:
        pg = statistics.median(run[metric] for run in results["postgres"])
        rd = statistics.median(run[metric] for run in results["redis"])
        print(f"{metric:<26}{pg:>12.2f}{rd:>12.2f}{pg / rd:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per broker (median)")
    parser.add_argument(
        "--events", type=int, default=2000, help="events per 1-subscriber latency run"
    )
    options = parser.parse_args()
    with services() as (dsn, redis_url):
        asyncio.run(measure(dsn, redis_url, options.repeats, options.events))


if __name__ == "__main__":
    main()
