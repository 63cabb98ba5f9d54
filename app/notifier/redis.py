"""The Redis notifier: one subscriber connection for the Redis cache and pub/sub backends.

Topics are Redis channel names. The connection is opened without redis-py's silent retry,
so a drop is seen: state handlers hear ``False``, the reader reconnects with backoff,
subscribes to every topic again and announces ``True`` (the pub/sub broker replays its
streams then; the cache empties its L1).

A SUBSCRIBE counts once Redis has confirmed it, as a LISTEN has once it has completed: a
SUBSCRIBE only sent may still sit behind a PUBLISH arriving on another connection. So
``listen`` returns after the confirmation, and ``True`` is announced after every topic's
confirmation: a message published after either is heard.
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

SUBSCRIBE_TIMEOUT = 5.0


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
        self._confirmations: dict[str, asyncio.Future[None]] = {}  # SUBSCRIBE sent, not acked
        self._announce_when_confirmed = False  # reconnected: True once every topic is acked

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
        self._release_confirmations()
        self._subscriptions.announce_state(False)

    async def listen(self, topic: str, handler: MessageHandler) -> Unlisten:
        if self._subscriptions.add(topic, handler):
            confirmed: asyncio.Future[None] | None = None
            async with self._lock:
                if self._pubsub is not None and self._connected:
                    confirmed = self._confirmations.setdefault(
                        topic, asyncio.get_running_loop().create_future()
                    )
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.subscribe(topic)  # the reader resubscribes if lost
            self._has_topics.set()
            if confirmed is not None:
                # Resolved by the reader on the confirmation, or on a loss (the reconnect
                # subscribes again); the timeout only guards against a reader gone silent.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)

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
                self._announce_when_confirmed = True
                self._announce_if_confirmed()
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
                message = await pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier: Redis subscriber lost: %s", exc)
                self._connected = False
                self._release_confirmations()
                if not self._announce_when_confirmed:  # else True was never announced
                    self._subscriptions.announce_state(False)
                self._announce_when_confirmed = False
                continue
            if message is None:
                continue
            kind, channel = message.get("type"), _text(message["channel"])
            if kind == "message":
                self._subscriptions.deliver(channel, _text(message["data"]))
            elif kind == "subscribe":
                confirmed = self._confirmations.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
                self._announce_if_confirmed()

    def _announce_if_confirmed(self) -> None:
        if self._announce_when_confirmed and not self._confirmations:
            self._announce_when_confirmed = False
            self._subscriptions.announce_state(True)

    def _release_confirmations(self) -> None:
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_result(None)
        self._confirmations.clear()

    async def _resubscribe(self) -> None:
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            pubsub = self._client.pubsub()
            topics = list(self._subscriptions.by_topic)
            loop = asyncio.get_running_loop()
            for topic in topics:
                self._confirmations.setdefault(topic, loop.create_future())
            if topics:
                await pubsub.subscribe(*topics)
            self._pubsub = pubsub
            if topics:
                self._has_topics.set()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
