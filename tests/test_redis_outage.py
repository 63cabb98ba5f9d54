"""With the Redis backends on and Redis unreachable, requests degrade instead of failing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx

from app.config import Settings
from app.main import create_app
from tests.helpers import flushed_redis, free_port


async def test_rate_limits_count_in_postgres_while_redis_is_unreachable(
    make_settings: Callable[..., Settings], db_conn: asyncpg.Connection
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        rate_limit_backend="redis",
        rate_limit_signup_per_ip=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            statuses = [
                (
                    await client.post(
                        "/api/auth/signup",
                        json={"email": f"u{n}@example.com", "password": "a long passphrase 1"},
                    )
                ).status_code
                for n in range(3)
            ]
    counted = await db_conn.fetchval("SELECT count(*) FROM rate_limits WHERE key LIKE 'signup:%'")
    assert statuses == [202, 202, 429]
    assert counted > 0


async def test_events_keep_arriving_after_redis_loses_its_data(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # A Redis restarted without persistence starts from nothing, its event sequence too:
    # ids must still grow, or the fan-out, which drops ids it has seen, drops the new events.
    from redis.asyncio import Redis

    from app.services import open_services

    settings = make_settings(redis_url=await flushed_redis(redis_url), pubsub_backend="redis")
    async with open_services(settings) as services:
        broker = services.broker
        subscription = await broker.subscribe(["user:1"])
        try:
            first = await broker.publish("user:1", {"n": 1})
            assert (await asyncio.wait_for(anext(subscription), 5)).payload == {"n": 1}
            client = Redis.from_url(redis_url)
            try:
                await client.flushall()
            finally:
                await client.aclose()
            second = await broker.publish("user:1", {"n": 2})
            received = await asyncio.wait_for(anext(subscription), 5)
        finally:
            await broker.unsubscribe(subscription)
    assert first is not None
    assert second is not None
    assert second > first
    assert received.payload == {"n": 2}
