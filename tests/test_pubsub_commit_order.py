"""Events commit out of id order (ids are taken at INSERT); resumes still miss none of them.

Postgres broker only: a Redis stream's ids are assigned in the order entries are added, so
there the order of ids is the order of delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.config import Settings
from app.pubsub import Subscription
from app.services import Services, open_services


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with open_services(make_settings(pubsub_backend="postgres")) as opened:
        yield opened


async def payloads(subscription: Subscription, count: int) -> list[object]:
    return [(await asyncio.wait_for(anext(subscription), 5)).payload for _ in range(count)]


async def nothing_more(subscription: Subscription) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(subscription), 0.3)


async def test_a_resume_returns_an_earlier_event_that_committed_after_the_last_one_seen(
    services: Services, channel: str
) -> None:
    broker = services.broker
    before = await broker.publish(channel, {"n": "before"})
    async with services.db.transaction() as conn:
        late = await broker.publish(channel, {"n": "late"}, conn=conn)
        seen = await broker.publish(channel, {"n": "seen"})  # commits at once, a higher id
    assert before < late < seen
    # Live, "late" arrived after "seen". A client that saw "seen" and left before "late"
    # came resumes after "seen": it gets "late", and neither "seen" nor "before" again.
    subscription = await broker.subscribe([channel], since=seen)
    try:
        assert await payloads(subscription, 1) == [{"n": "late"}]
        await nothing_more(subscription)
    finally:
        await broker.unsubscribe(subscription)


async def test_a_late_commit_below_the_replayed_ids_is_delivered_live(
    services: Services, channel: str
) -> None:
    broker = services.broker
    first = await broker.publish(channel, {"n": "first"})
    async with services.db.transaction() as conn:
        await broker.publish(channel, {"n": "late"}, conn=conn)
        await broker.publish(channel, {"n": "replayed"})  # committed: the replay finds it
        subscription = await broker.subscribe([channel], since=first)
    # "late" commits now, after the replay read past its id: it arrives live only.
    try:
        assert await payloads(subscription, 2) == [{"n": "replayed"}, {"n": "late"}]
        await nothing_more(subscription)
    finally:
        await broker.unsubscribe(subscription)
