"""Pub/sub: publish an event to a channel; every subscriber of it, in any process, gets it.

    from app.pubsub import publish
    await publish(f"user:{user_id}", {"type": "task.created", "id": task_id}, conn=conn)

With ``conn`` the event belongs to the caller's transaction: delivered on commit, never on
rollback — on both backends, and only for a connection of ``db.transaction()`` (a connection
in a transaction opened any other way is refused with ``ValueError``, by both backends
alike; a connection outside any transaction publishes at once). Subscribers get an async
iterator of ``Event(id, channel, payload)``; ids grow, so a client resumes with the last id
it saw (SSE ``Last-Event-ID``).

Two brokers behind one protocol, chosen once by PUBSUB_BACKEND:

- ``postgres`` (default): an events table + NOTIFY, heard through the process's notifier
  (``postgres.py``).
- ``redis``: Redis Streams for replay + PUBLISH for delivery (``redis.py``). Flip to it when
  NOTIFY's queue fills up (``pg_notification_queue_usage()`` > SIGNAL_NOTIFY_QUEUE_USAGE),
  when publishers contend on NOTIFY's commit lock, or when fan-out spans many instances.

Limits (settings): channel names are 1–48 characters of ``[A-Za-z0-9_.:-]``; each local
subscriber may fall PUBSUB_QUEUE_SIZE events behind before it is dropped; a resume replays
at most PUBSUB_REPLAY_LIMIT events; events are kept PUBSUB_RETENTION_SECONDS.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from app.config import Settings
from app.current import Current
from app.db import Connection, Database
from app.notifier import Notifier
from app.pubsub.fanout import Event, SubscriberDropped, Subscription

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Broker",
    "Event",
    "SubscriberDropped",
    "Subscription",
    "create_broker",
    "current_broker",
    "publish",
    "subscribe",
]

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,48}$")


class Broker(Protocol):
    """What both brokers do, with the same observable behaviour.

    ``publish(conn=...)``: a connection of ``db.transaction()`` → delivered after COMMIT,
    never after ROLLBACK (returns None on Redis, whose id exists only after the commit); a
    connection in any other transaction → ``ValueError``; a connection outside any
    transaction → published at once. Without ``conn`` → published at once.

    ``prune(older_than_seconds)``: drop what no resume may replay any more. Postgres
    deletes rows of the events table older than that, in batches of ``batch``, and
    returns how many. Redis streams bound themselves on every publish (``MAXLEN ~`` and
    an ``EXPIRE`` of PUBSUB_RETENTION_SECONDS on the channel's stream), so there is
    nothing left to delete: it returns 0.
    """

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int | None: ...
    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription: ...
    async def unsubscribe(self, subscription: Subscription) -> None: ...
    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int: ...
    def health(self) -> tuple[str, bool]: ...


def create_broker(
    settings: Settings, db: Database, notifier: Notifier, redis: Redis | None = None
) -> Broker:
    """The broker PUBSUB_BACKEND names; ``notifier`` is the one of the same backend."""
    options = {
        "queue_size": settings.pubsub_queue_size,
        "replay_limit": settings.pubsub_replay_limit,
    }
    if settings.pubsub_backend == "redis":
        from app.pubsub.redis import RedisBroker

        if redis is None:
            raise ValueError("PUBSUB_BACKEND=redis needs a Redis client (REDIS_URL)")
        return RedisBroker(
            db, redis, notifier, retention_seconds=settings.pubsub_retention_seconds, **options
        )
    from app.pubsub.postgres import PostgresBroker

    return PostgresBroker(
        db, notifier, synchronous_commit=settings.pubsub_synchronous_commit, **options
    )


current_broker: Current[Broker] = Current("the pub/sub broker")


def check_channel(channel: str) -> None:
    if not CHANNEL_NAME.match(channel):
        raise ValueError(f"invalid channel name {channel!r}: 1-48 of [A-Za-z0-9_.:-]")


async def publish(
    channel: str, payload: dict[str, Any], *, conn: Connection | None = None
) -> int | None:
    """Publish on the open services' broker; the event id (None when deferred to commit)."""
    check_channel(channel)
    return await current_broker.get().publish(channel, payload, conn=conn)


@asynccontextmanager
async def subscribe(
    channels: list[str], *, since: int | None = None
) -> AsyncIterator[Subscription]:
    """Subscribe for the duration of the block; events after ``since`` are replayed first."""
    for channel in channels:
        check_channel(channel)
    broker = current_broker.get()
    subscription = await broker.subscribe(channels, since=since)
    try:
        yield subscription
    finally:
        await broker.unsubscribe(subscription)


def in_caller_transaction(db: Database, conn: Connection) -> bool:
    """For ``publish(conn=...)``: True when the event must follow ``conn``'s transaction.

    False when ``conn`` is outside any transaction (publish at once). ValueError when it
    is in a transaction that ``db.transaction()`` did not open: both brokers refuse it,
    since the Redis one could not follow that commit.
    """
    if not conn.is_in_transaction():
        return False
    if not db.owns_transaction(conn):
        raise ValueError(
            "publish(conn=...) inside a transaction needs a connection of db.transaction(), "
            "so that the event can follow the commit"
        )
    return True
