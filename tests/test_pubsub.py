"""The pub/sub contract, run against both brokers (PUBSUB_BACKEND=postgres and redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.config import Settings
from app.main import create_app
from app.pubsub import Broker, Event, SubscriberDropped, Subscription, publish, subscribe
from tests.helpers import eventually, flushed_redis


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def running_app(
    backend: str, make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> AsyncIterator[FastAPI]:
    overrides: dict[str, Any] = {
        "pubsub_backend": backend,
        "pubsub_queue_size": 50,
        "ops_token": "ops-secret",
    }
    if backend == "redis":
        overrides["redis_url"] = await flushed_redis(request.getfixturevalue("redis_url"))
    app = create_app(make_settings(**overrides))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def broker(running_app: FastAPI) -> Broker:
    return running_app.state.services.broker  # type: ignore[no-any-return]


async def next_event(subscription: Subscription, within: float = 5.0) -> Event:
    return await asyncio.wait_for(anext(subscription), within)


async def no_event(subscription: Subscription, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(subscription), within)


async def test_subscriber_receives_published_events_in_order(broker: Broker, channel: str) -> None:
    async with subscribe([channel]) as subscription:
        first = await publish(channel, {"n": 1})
        second = await publish(channel, {"n": 2})
        received = [await next_event(subscription), await next_event(subscription)]
    assert [event.payload for event in received] == [{"n": 1}, {"n": 2}]
    assert [event.id for event in received] == [first, second]
    assert first is not None
    assert second is not None
    assert first < second


async def test_subscribers_only_get_their_channels(broker: Broker, channel: str) -> None:
    async with subscribe([channel]) as mine, subscribe([channel + "x"]) as other:
        await publish(channel + "x", {"for": "other"})
        await publish(channel, {"for": "mine"})
        assert (await next_event(mine)).payload == {"for": "mine"}
        assert (await next_event(other)).payload == {"for": "other"}
        await no_event(mine)


async def test_publish_in_transaction_is_delivered_on_commit_only(
    running_app: FastAPI, channel: str
) -> None:
    db = running_app.state.services.db
    async with subscribe([channel]) as subscription:

        async def publish_then_fail() -> None:
            async with db.transaction() as conn:
                await publish(channel, {"outcome": "rolled back"}, conn=conn)
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await publish_then_fail()

        async with db.transaction() as conn:
            await publish(channel, {"outcome": "committed"}, conn=conn)
            await no_event(subscription, within=0.2)  # nothing before COMMIT

        assert (await next_event(subscription)).payload == {"outcome": "committed"}
        await no_event(subscription)


async def test_payloads_over_the_notify_limit_are_delivered(broker: Broker, channel: str) -> None:
    big = {"text": "é" * 20_000}  # 40 KB of UTF-8, five times NOTIFY's limit
    async with subscribe([channel]) as subscription:
        await publish(channel, {"n": 1})
        await publish(channel, big)
        await publish(channel, {"n": 3})
        received = [await next_event(subscription) for _ in range(3)]
    assert [event.payload for event in received] == [{"n": 1}, big, {"n": 3}]


async def test_resume_replays_what_was_missed(broker: Broker, channel: str) -> None:
    seen = await publish(channel, {"n": 1})
    await publish(channel, {"n": 2})
    await publish(channel, {"n": 3})
    async with subscribe([channel], since=seen) as subscription:
        await publish(channel, {"n": 4})
        received = [(await next_event(subscription)).payload["n"] for _ in range(3)]
        await no_event(subscription)
    assert received == [2, 3, 4]


async def test_slow_subscriber_is_dropped_with_a_reason(broker: Broker, channel: str) -> None:
    dropped_before = REGISTRY.get_sample_value("pubsub_subscribers_dropped_total")
    async with subscribe([channel]) as slow, subscribe([channel]) as fast:
        for n in range(60):  # queue size is 50 in these tests
            await publish(channel, {"n": n})
            assert (await next_event(fast)).payload == {"n": n}
        delivered: list[Event] = []

        async def drain() -> None:
            while True:
                delivered.append(await next_event(slow))

        with pytest.raises(SubscriberDropped, match="slow consumer"):
            await drain()
        assert len(delivered) == 50  # what was queued is still handed out, then the drop
    assert (
        REGISTRY.get_sample_value("pubsub_subscribers_dropped_total") == (dropped_before or 0) + 1
    )


async def _kill_listener(app: FastAPI, backend: str) -> None:
    if backend == "postgres":
        async with app.state.services.db.acquire() as conn:
            killed = await conn.fetchval(
                """
                SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND query LIKE 'LISTEN "pgfirst.%'
                """
            )
        assert killed == 1
    else:
        redis = Redis.from_url(app.state.services.settings.redis_url)
        killed = await redis.client_kill_filter(_type="pubsub")
        await redis.aclose()
        assert killed >= 1


async def test_listener_loss_loses_and_duplicates_nothing(
    running_app: FastAPI, backend: str, channel: str
) -> None:
    broker: Any = running_app.state.services.broker
    async with subscribe([channel]) as subscription:
        await publish(channel, {"n": 0})
        assert (await next_event(subscription)).payload == {"n": 0}

        await _kill_listener(running_app, backend)
        for n in range(1, 6):  # published while the listener may be down
            await publish(channel, {"n": n})
        await eventually(lambda: _healthy(broker))
        await publish(channel, {"n": 6})

        received = [(await next_event(subscription)).payload["n"] for _ in range(6)]
        await no_event(subscription)
    assert received == [1, 2, 3, 4, 5, 6]


async def _healthy(broker: Any) -> bool:
    return bool(broker.health()[1])


async def test_readiness_reports_the_listener(running_app: FastAPI) -> None:
    import httpx

    transport = httpx.ASGITransport(app=running_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = (await client.get("/readyz", headers={"Authorization": "Bearer ops-secret"})).json()
    assert body["checks"]["pubsub"] == "listening"


@pytest.mark.parametrize("name", ["", "has space", "x" * 49, "semi;colon", "ünicode"])
async def test_invalid_channel_names_are_refused(broker: Broker, name: str) -> None:
    with pytest.raises(ValueError, match="invalid channel name"):
        await publish(name, {})


async def test_metrics_count_subscribers_deliveries_and_notifier_messages(
    running_app: FastAPI, backend: str, channel: str
) -> None:
    import httpx

    transport = httpx.ASGITransport(app=running_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = await scrape(client)
        async with subscribe([channel]) as first, subscribe([channel]) as second:
            await publish(channel, {"n": 1})
            await next_event(first)
            await next_event(second)
            during = await scrape(client)
        after = await scrape(client)

    def moved(samples: dict[str, float], name: str) -> float:
        return samples.get(name, 0.0) - before.get(name, 0.0)

    assert moved(during, "pubsub_subscribers") == 2
    assert moved(after, "pubsub_subscribers") == 0
    assert moved(during, "pubsub_events_delivered_total") == 2  # one event, two subscribers
    messages = f'notifier_messages_total{{backend="{backend}"}}'
    assert moved(during, messages) == 1  # heard once by the process, whatever the fan-out
    assert during[f'notifier_connected{{backend="{backend}"}}'] == 1.0


async def scrape(client: Any) -> dict[str, float]:
    """/metrics samples by ``name{labels}`` as the text format writes them."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
