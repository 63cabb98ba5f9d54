"""Standalone Postgres publishes that arrive together are written together.

While one batch is in flight, the publishes that arrive wait and go out in the next one:
one INSERT, the NOTIFYs and one commit. Rows written by one transaction share their
``xmin``, which is how these tests see the batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.config import Settings
from app.pubsub import Event, Subscription
from app.services import Services, open_services


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with open_services(make_settings(pubsub_backend="postgres")) as opened:
        yield opened


async def received(subscription: Subscription, count: int) -> list[Event]:
    return [await asyncio.wait_for(anext(subscription), 5) for _ in range(count)]


async def transactions_of(services: Services, channel: str) -> int:
    async with services.db.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM events WHERE channel = $1", channel
        )
    return int(count)


async def test_concurrent_publishes_share_commits_and_arrive_in_id_order(
    services: Services, channel: str
) -> None:
    subscription = await services.broker.subscribe([channel])
    ids = await asyncio.gather(*(services.broker.publish(channel, {"n": n}) for n in range(50)))
    events = await received(subscription, 50)

    assert len(set(ids)) == 50
    assert [event.id for event in events] == sorted(ids)
    # Each publisher got the id of its own event.
    assert {event.id: event.payload["n"] for event in events} == {
        event_id: n for n, event_id in enumerate(ids)
    }
    assert await transactions_of(services, channel) < 50


async def test_a_bad_event_fails_alone(services: Services, channel: str) -> None:
    # jsonb refuses \u0000, so this event's INSERT fails; its batch is then sent one by one.
    subscription = await services.broker.subscribe([channel])
    results = await asyncio.gather(
        services.broker.publish(channel, {"n": 0}),
        services.broker.publish(channel, {"bad": "\u0000"}),
        services.broker.publish(channel, {"n": 2}),
        return_exceptions=True,
    )

    assert isinstance(results[0], int)
    assert isinstance(results[2], int)
    assert isinstance(results[1], Exception)
    assert [event.payload for event in await received(subscription, 2)] == [{"n": 0}, {"n": 2}]


async def test_publishes_in_flight_complete_before_the_broker_stops(
    make_settings: Callable[..., Settings], channel: str
) -> None:
    async with open_services(make_settings(pubsub_backend="postgres")) as opened:
        publishes = [
            asyncio.create_task(opened.broker.publish(channel, {"n": n})) for n in range(20)
        ]
        await asyncio.sleep(0)  # the publishes are queued, the first batch is not sent yet
    ids = [task.result() for task in publishes]

    async with (
        open_services(make_settings(pubsub_backend="postgres")) as reopened,
        reopened.db.acquire() as conn,
    ):
        stored = await conn.fetchval("SELECT count(*) FROM events WHERE channel = $1", channel)
    assert stored == 20
    assert len(set(ids)) == 20
