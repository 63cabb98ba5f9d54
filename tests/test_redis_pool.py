"""The services' Redis client: past REDIS_MAX_CONNECTIONS a command waits, it does not fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from app.config import Settings
from app.db.redis_pool import WaitingConnectionPool, open_redis
from app.services import open_services

READERS = 300


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = open_redis(redis_url, max_connections=8, timeout=5.0)
    await redis.set("pool-test", b"v")
    try:
        yield redis
    finally:
        await redis.aclose()


def waits() -> float:
    return REGISTRY.get_sample_value("redis_pool_waits_total") or 0.0


async def connected_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def test_commands_beyond_the_limit_wait_for_a_connection(
    client: Redis, redis_url: str
) -> None:
    # redis-py's own pool at the same limit fails most of such a burst outright.
    plain = Redis.from_url(redis_url, max_connections=8)
    try:
        results = await asyncio.gather(
            *(plain.get("pool-test") for _ in range(READERS)), return_exceptions=True
        )
    finally:
        await plain.aclose()
    assert any(isinstance(result, MaxConnectionsError) for result in results)

    before_clients = await connected_clients(client)  # this client's one connection included
    before_waits = waits()
    values = await asyncio.gather(*(client.get("pool-test") for _ in range(READERS)))
    assert values == [b"v"] * READERS
    assert await connected_clients(client) - before_clients <= 7
    assert waits() > before_waits


async def test_a_command_that_finds_no_connection_in_time_fails_like_an_outage(
    redis_url: str,
) -> None:
    redis = open_redis(redis_url, max_connections=1, timeout=0.2)
    try:
        blocked = asyncio.create_task(redis.blpop(["pool-test-empty"], timeout=1))
        await asyncio.sleep(0.1)  # BLPOP holds the only connection for a second
        with pytest.raises(RedisConnectionError, match="REDIS_MAX_CONNECTIONS"):
            await redis.get("pool-test")
        assert await blocked is None
        assert await redis.ping()  # the connection came back to the pool
    finally:
        await redis.aclose()


async def test_a_waiter_that_gives_up_leaves_the_queue_to_the_others(redis_url: str) -> None:
    redis = open_redis(redis_url, max_connections=1, timeout=5.0)
    try:
        await redis.set("pool-test", b"v")
        blocked = asyncio.create_task(redis.blpop(["pool-test-empty"], timeout=0.5))
        await asyncio.sleep(0.1)
        impatient = asyncio.create_task(redis.get("pool-test"))
        patient = asyncio.create_task(redis.get("pool-test"))
        await asyncio.sleep(0.05)
        impatient.cancel()
        assert await patient == b"v"  # served once BLPOP gave the connection back
        assert impatient.cancelled()
        assert await blocked is None
    finally:
        await redis.aclose()


async def test_the_services_client_uses_the_waiting_pool(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(
        redis_url=redis_url,
        cache_backend="redis",
        redis_max_connections=7,
        redis_pool_timeout_seconds=1.5,
    )
    async with open_services(settings) as services:
        assert services.redis is not None
        pool = services.redis.connection_pool
        assert isinstance(pool, WaitingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (7, 1.5)
