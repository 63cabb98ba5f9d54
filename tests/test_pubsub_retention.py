"""What each broker keeps for resumes, and for how long (``Broker.prune``).

Postgres keeps rows in ``events`` until ``prune`` (the hourly ``pgfirst.prune_events`` job)
deletes those past PUBSUB_RETENTION_SECONDS. Redis bounds each channel's stream on every
publish — ``MAXLEN ~`` and an ``EXPIRE`` of the retention — so its ``prune`` has nothing
left to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.pubsub.redis import KEY_PREFIX, RedisBroker
from app.services import Services, open_services
from tests.helpers import flushed_redis


@pytest.fixture
async def on_redis(
    make_settings: Callable[..., Settings], redis_url: str
) -> AsyncIterator[Services]:
    settings = make_settings(
        pubsub_backend="redis",
        redis_url=await flushed_redis(redis_url),
        pubsub_retention_seconds=600,
    )
    async with open_services(settings) as services:
        yield services


async def test_postgres_prune_deletes_events_past_the_retention(
    make_settings: Callable[..., Settings], channel: str
) -> None:
    async with open_services(make_settings(pubsub_backend="postgres")) as services:
        db, broker = services.db, services.broker
        await broker.publish(channel, {"n": 1})
        await broker.publish(channel, {"n": 2})
        async with db.acquire() as conn:
            await conn.execute(
                "UPDATE events SET created_at = now() - interval '2 days'"
                " WHERE payload = '{\"n\": 1}'"
            )
        await broker.publish(channel, {"n": 3})
        deleted = await broker.prune(older_than_seconds=86_400)
        async with db.acquire() as conn:
            remaining = await conn.fetch("SELECT payload FROM events ORDER BY id")
    assert deleted == 1
    assert [row["payload"] for row in remaining] == [{"n": 2}, {"n": 3}]


async def test_postgres_prune_works_through_more_than_one_batch(
    make_settings: Callable[..., Settings], channel: str
) -> None:
    async with open_services(make_settings(pubsub_backend="postgres")) as services:
        for n in range(5):
            await services.broker.publish(channel, {"n": n})
        async with services.db.acquire() as conn:
            await conn.execute("UPDATE events SET created_at = now() - interval '2 days'")
            deleted = await services.broker.prune(older_than_seconds=86_400, batch=2)
            remaining = await conn.fetchval("SELECT count(*) FROM events")
    assert (deleted, remaining) == (5, 0)


async def test_redis_stream_expires_after_the_retention(on_redis: Services, channel: str) -> None:
    assert on_redis.redis is not None
    await on_redis.broker.publish(channel, {"n": 1})
    ttl = await on_redis.redis.ttl(KEY_PREFIX + channel)
    assert 0 < ttl <= 600


async def test_redis_stream_is_capped_at_its_max_length(on_redis: Services, channel: str) -> None:
    redis: Redis = on_redis.redis  # type: ignore[assignment]
    assert on_redis.redis_notifier is not None
    broker = RedisBroker(on_redis.db, redis, on_redis.redis_notifier, stream_max_len=100)
    for n in range(1_000):
        await broker.publish(channel, {"n": n})
    # MAXLEN ~ trims whole nodes of the stream (100 entries each by default).
    length = await redis.xlen(KEY_PREFIX + channel)
    assert 100 <= length <= 200


async def test_redis_prune_deletes_nothing_the_streams_bound_themselves(
    on_redis: Services, channel: str
) -> None:
    assert on_redis.redis is not None
    await on_redis.broker.publish(channel, {"n": 1})
    assert await on_redis.broker.prune(older_than_seconds=0) == 0
    assert await on_redis.redis.xlen(KEY_PREFIX + channel) == 1
