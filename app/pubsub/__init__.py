"""Pub/sub: publish an event to a channel; every subscriber of it, in any process, gets it.

    from app.pubsub import publish
    await publish(f"user:{user_id}", {"type": "task.created", "id": task_id}, conn=conn)

With ``conn`` the event belongs to the caller's transaction: delivered on commit, never on
rollback. Subscribers get an async iterator of ``Event(id, channel, payload)``; ids grow,
so a client resumes with the last id it saw (SSE ``Last-Event-ID``).

Two brokers behind one protocol, chosen once by PUBSUB_BACKEND:

- ``postgres`` (default): an events table + LISTEN/NOTIFY, one listening connection per
  process (``postgres.py``).
- ``redis``: Redis Streams for replay + PUBLISH for delivery (``redis.py``). Flip to it when
  NOTIFY's queue fills up (``pg_notification_queue_usage()`` > SIGNAL_NOTIFY_QUEUE_USAGE),
  when publishers contend on NOTIFY's commit lock, or when fan-out spans many instances.

Limits (settings): channel names are 1–48 characters of ``[A-Za-z0-9_.:-]``; each local
subscriber may fall PUBSUB_QUEUE_SIZE events behind before it is dropped; a resume replays
at most PUBSUB_REPLAY_LIMIT events; events are kept PUBSUB_RETENTION_SECONDS.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from app.config import Settings, get_settings
from app.db import Connection, Database, get_database
from app.pubsub.fanout import Event, SubscriberDropped, Subscription

__all__ = [
    "Broker",
    "Event",
    "SubscriberDropped",
    "Subscription",
    "create_broker",
    "get_broker",
    "publish",
    "set_broker",
    "subscribe",
]

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,48}$")


class Broker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int | None: ...
    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription: ...
    async def unsubscribe(self, subscription: Subscription) -> None: ...
    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int: ...
    def health(self) -> tuple[str, bool]: ...


def create_broker(settings: Settings, db: Database) -> Broker:
    options = {
        "queue_size": settings.pubsub_queue_size,
        "replay_limit": settings.pubsub_replay_limit,
    }
    if settings.pubsub_backend == "redis":
        from app.pubsub.redis import RedisBroker

        assert settings.redis_url is not None  # enforced by Settings
        return RedisBroker(
            db,
            settings.redis_url,
            retention_seconds=settings.pubsub_retention_seconds,
            **options,
        )
    from app.pubsub.postgres import PostgresBroker

    return PostgresBroker(db, **options)


_current: Broker | None = None
_starting = asyncio.Lock()


def set_broker(broker: Broker | None) -> None:
    """Register the process's broker (the app lifespan does this)."""
    global _current
    _current = broker


async def get_broker() -> Broker:
    """The registered broker, or one started from Settings for a plain script."""
    global _current
    if _current is None:
        async with _starting:
            if _current is None:
                broker = create_broker(get_settings(), await get_database())
                await broker.start()
                _current = broker
    return _current


def _check_channel(channel: str) -> None:
    if not CHANNEL_NAME.match(channel):
        raise ValueError(f"invalid channel name {channel!r}: 1-48 of [A-Za-z0-9_.:-]")


async def publish(
    channel: str, payload: dict[str, Any], *, conn: Connection | None = None
) -> int | None:
    """Publish ``payload`` on ``channel``; returns the event id (None when deferred to commit)."""
    _check_channel(channel)
    return await (await get_broker()).publish(channel, payload, conn=conn)


@asynccontextmanager
async def subscribe(
    channels: list[str], *, since: int | None = None
) -> AsyncIterator[Subscription]:
    """Subscribe for the duration of the block; events after ``since`` are replayed first."""
    for channel in channels:
        _check_channel(channel)
    broker = await get_broker()
    subscription = await broker.subscribe(channels, since=since)
    try:
        yield subscription
    finally:
        await broker.unsubscribe(subscription)
