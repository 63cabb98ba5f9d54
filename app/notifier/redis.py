"""The Redis notifier: one subscriber connection for the Redis cache and pub/sub backends.

Topics are Redis channel names. The connection is opened without redis-py's silent retry,
so a drop is seen: state handlers hear ``False``, the reader reconnects with backoff,
subscribes to every topic again and announces ``True`` (the pub/sub broker replays its
streams then; the cache empties its L1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.notifier import (
    RECONNECT_FIRST_DELAY,
    RECONNECTS,
    MessageHandler,
    StateHandler,
    Subscriptions,
    Unlisten,
    next_delay,
)

log = logging.getLogger(__name__)


class RedisNotifier:
    name = "redis"

    def __init__(self, url: str) -> None:
        self._client: Redis = Redis.from_url(url, retry=Retry(NoBackoff(), 0))
        self._subscriptions = Subscriptions("redis")
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()
        self._has_topics = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        """Connect, or keep trying in the background: an unreachable Redis is not fatal."""
        self._pubsub = self._client.pubsub()
        try:
            await self._client.ping()
        except Exception as exc:
            log.warning("notifier: Redis unreachable (%s); retrying in the background", exc)
        else:
            self._connected = True
        self._subscriptions.announce_state(self._connected)
        self._reader = asyncio.create_task(self._read(), name="notifier-redis")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._client.aclose()
        self._connected = False
        self._subscriptions.announce_state(False)

    async def listen(self, topic: str, handler: MessageHandler) -> Unlisten:
        if self._subscriptions.add(topic, handler):
            async with self._lock:
                if self._pubsub is not None and self._connected:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.subscribe(topic)  # the reader resubscribes if lost
            self._has_topics.set()

        async def unlisten() -> None:
            if self._subscriptions.remove(topic, handler):
                async with self._lock:
                    if self._pubsub is not None and self._connected:
                        with contextlib.suppress(RedisError, OSError):
                            await self._pubsub.unsubscribe(topic)

        return unlisten

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        return self._subscriptions.add_state_handler(handler)

    def health(self) -> tuple[str, bool]:
        return ("listening" if self._connected else "reconnecting"), self._connected

    async def _read(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while True:
            if not self._connected:
                try:
                    await self._client.ping()
                    await self._resubscribe()
                except Exception as exc:
                    log.warning("notifier: Redis reconnect failed (%s); again in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = next_delay(delay)
                    continue
                delay = RECONNECT_FIRST_DELAY
                RECONNECTS.labels("redis").inc()
                log.info("notifier: Redis subscriber connected")
                self._connected = True
                self._subscriptions.announce_state(True)
                continue
            await self._has_topics.wait()
            pubsub = self._pubsub
            assert pubsub is not None
            try:
                if not pubsub.subscribed:
                    # Nothing subscribed (every topic was let go): wait for a new one.
                    self._has_topics.clear()
                    if self._subscriptions.by_topic:
                        await self._resubscribe()
                    continue
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier: Redis subscriber lost: %s", exc)
                self._connected = False
                self._subscriptions.announce_state(False)
                continue
            if message is not None and message.get("type") == "message":
                channel = message["channel"]
                data = message["data"]
                self._subscriptions.deliver(
                    channel.decode() if isinstance(channel, bytes) else str(channel),
                    data.decode() if isinstance(data, bytes) else str(data),
                )

    async def _resubscribe(self) -> None:
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            pubsub = self._client.pubsub()
            topics = list(self._subscriptions.by_topic)
            if topics:
                await pubsub.subscribe(*topics)
            self._pubsub = pubsub
            if topics:
                self._has_topics.set()
