"""``publish(conn=...)``: one rule, the same on both brokers.

- a connection of ``db.transaction()`` → delivered after COMMIT, never after ROLLBACK;
- a connection inside a transaction opened any other way → ``ValueError``;
- a connection outside any transaction → published at once.

Order is the witness: a marker published at once, on another connection, while the
transaction is still open, must arrive before the transaction's event — and a rolled-back
event, had it leaked, would arrive before a marker published after the rollback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.config import Settings
from app.pubsub import Event, Subscription
from app.services import Services, open_services
from tests.helpers import flushed_redis


@pytest.fixture(params=["postgres", "redis"])
async def services(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[Services]:
    overrides: dict[str, object] = {"pubsub_backend": request.param}
    if request.param == "redis":
        overrides["redis_url"] = await flushed_redis(request.getfixturevalue("redis_url"))
    async with open_services(make_settings(**overrides)) as opened:
        yield opened


@pytest.fixture
async def subscription(services: Services, channel: str) -> AsyncIterator[Subscription]:
    subscribed = await services.broker.subscribe([channel])
    try:
        yield subscribed
    finally:
        await services.broker.unsubscribe(subscribed)


async def next_payload(subscription: Subscription) -> object:
    event: Event = await asyncio.wait_for(anext(subscription), 5)
    return event.payload


async def replayed(services: Services, channel: str) -> list[object]:
    """Every event the broker kept for ``channel``, as a resume from 0 would see them."""
    subscription = await services.broker.subscribe([channel], since=0)
    await services.broker.unsubscribe(subscription)
    return [event.payload async for event in subscription]


async def test_publish_in_db_transaction_is_delivered_after_commit(
    services: Services, channel: str, subscription: Subscription
) -> None:
    async with services.db.transaction() as conn:
        await services.broker.publish(channel, {"n": "in the transaction"}, conn=conn)
        await services.broker.publish(channel, {"n": "marker"})
    assert await next_payload(subscription) == {"n": "marker"}
    assert await next_payload(subscription) == {"n": "in the transaction"}


async def test_publish_in_rolled_back_db_transaction_is_never_delivered(
    services: Services, channel: str, subscription: Subscription
) -> None:
    async def publish_then_fail() -> None:
        async with services.db.transaction() as conn:
            await services.broker.publish(channel, {"n": "rolled back"}, conn=conn)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        await publish_then_fail()
    await services.broker.publish(channel, {"n": "marker"})
    assert await next_payload(subscription) == {"n": "marker"}
    assert await replayed(services, channel) == [{"n": "marker"}]


async def test_publish_in_a_transaction_not_of_db_transaction_is_refused(
    services: Services, channel: str
) -> None:
    async with services.db.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match=r"db\.transaction\(\)"):
            await services.broker.publish(channel, {"n": 1}, conn=conn)
    assert await replayed(services, channel) == []


async def test_publish_on_a_connection_outside_a_transaction_is_delivered_at_once(
    services: Services, channel: str, subscription: Subscription
) -> None:
    async with services.db.acquire() as conn:
        event_id = await services.broker.publish(channel, {"n": 1}, conn=conn)
        event: Event = await asyncio.wait_for(anext(subscription), 5)  # conn still held
    assert (event.id, event.payload) == (event_id, {"n": 1})


async def test_publish_without_a_connection_returns_the_delivered_id(
    services: Services, channel: str, subscription: Subscription
) -> None:
    first = await services.broker.publish(channel, {"n": 1})
    second = await services.broker.publish(channel, {"n": 2})
    received = [await asyncio.wait_for(anext(subscription), 5) for _ in range(2)]
    assert [event.id for event in received] == [first, second]
    assert first is not None
    assert second is not None
    assert first < second
