"""The Redis broker (PUBSUB_BACKEND=redis): same semantics, Redis doing the work.

A Lua script publishes atomically: INCR a global sequence (the event id), XADD the event to
a per-channel stream capped by MAXLEN and expiring after the retention (for replay), and
PUBLISH ``"<id> <payload>"`` for live delivery. Ids come from one sequence inside Redis, so
they are strictly in delivery order and replay by id is exact. Payloads have no 8 KB limit.

``publish(conn=...)`` keeps the Postgres contract — delivered on commit, never on rollback —
by deferring the Redis call until the ``db.transaction()`` holding ``conn`` commits.

One subscriber connection per process fans out to local subscribers. It is opened without
redis-py's silent retry, so a dropped connection is noticed: the broker reconnects with
backoff, subscribes again and replays the gap from the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from app.db import Connection, Database
from app.pubsub.fanout import Event, Fanout, Subscription
from app.pubsub.postgres import LISTENER_CONNECTED, LISTENER_RECONNECTS, REPLAY_LOOKBACK_IDS

log = logging.getLogger(__name__)

KEY_PREFIX = "pgfirst:events:"
SEQUENCE_KEY = "pgfirst:events-seq"
STREAM_MAX_LEN = 10_000

PUBLISH_SCRIPT = """
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'p', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], id .. ' ' .. ARGV[1])
return id
"""


class RedisBroker:
    def __init__(
        self,
        db: Database,
        redis_url: str,
        *,
        queue_size: int = 1_000,
        replay_limit: int = 1_000,
        retention_seconds: int = 86_400,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.db = db
        self.redis_url = redis_url
        self.fanout = Fanout(queue_size=queue_size)
        self.replay_limit = replay_limit
        self.retention_seconds = retention_seconds
        self.reconnect_max_delay = reconnect_max_delay
        self._redis: Redis = Redis.from_url(redis_url)
        # No silent reconnect for the subscriber: a gap must be seen to be replayed.
        self._subscriber: Redis = Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
        self._pubsub: PubSub | None = None
        self._publish = self._redis.register_script(PUBLISH_SCRIPT)
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.connected = False

    async def start(self) -> None:
        await self._redis.ping()
        self._pubsub = self._subscriber.pubsub()
        self.connected = True
        LISTENER_CONNECTED.set(1)
        self._reader = asyncio.create_task(self._read(), name="pubsub-redis-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.fanout.close_all()
        if self._pubsub is not None:
            with contextlib.suppress(RedisConnectionError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._subscriber.aclose()
        await self._redis.aclose()
        self.connected = False
        LISTENER_CONNECTED.set(0)

    def health(self) -> tuple[str, bool]:
        return ("listening" if self.connected else "reconnecting"), self.connected

    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int | None:
        body = orjson.dumps(payload).decode()
        if conn is not None and conn.is_in_transaction():
            if not self.db.after_commit(conn, lambda: self._publish_now(channel, body)):
                raise RuntimeError(
                    "PUBSUB_BACKEND=redis: publish(conn=...) inside a transaction needs the "
                    "connection of db.transaction(), so the event can follow the commit"
                )
            return None
        return await self._publish_now(channel, body)

    async def _publish_now(self, channel: str, body: str) -> int:
        keys = [SEQUENCE_KEY, KEY_PREFIX + channel, "pgfirst." + channel]
        args: list[str | int] = [body, STREAM_MAX_LEN, self.retention_seconds]
        return int(await self._publish(keys=keys, args=args))

    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription:
        subscription, new_channels = self.fanout.add(channels)
        try:
            if new_channels:
                async with self._lock:
                    if self._pubsub is not None:
                        await self._pubsub.subscribe(*("pgfirst." + c for c in new_channels))
                self._has_channels.set()
            if since is not None:
                subscription.preload(await self._events_since(channels, since, self.replay_limit))
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        emptied = self.fanout.remove(subscription)
        if emptied and self._pubsub is not None:
            async with self._lock:
                with contextlib.suppress(RedisConnectionError, OSError):
                    await self._pubsub.unsubscribe(*("pgfirst." + c for c in emptied))

    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int:
        """Streams trim themselves (MAXLEN and EXPIRE on every publish)."""
        return 0

    async def _read(self) -> None:
        delay = 0.05
        while True:
            await self._has_channels.wait()
            pubsub = self._pubsub
            assert pubsub is not None
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.connected = False
                LISTENER_CONNECTED.set(0)
                log.warning("pubsub redis connection lost: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
                await self._resubscribe()
                continue
            delay = 0.05
            if message is None or message.get("type") != "message":
                if not pubsub.subscribed and not self.fanout.channels():
                    self._has_channels.clear()
                continue
            channel = message["channel"].decode().removeprefix("pgfirst.")
            event_id_text, _, body = message["data"].decode().partition(" ")
            self._dispatch(Event(int(event_id_text), channel, orjson.loads(body)))

    async def _resubscribe(self) -> None:
        async with self._lock:
            with contextlib.suppress(Exception):
                if self._pubsub is not None:
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            pubsub = self._subscriber.pubsub()
            channels = self.fanout.channels()
            try:
                if channels:
                    await pubsub.subscribe(*("pgfirst." + c for c in channels))
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return  # the reader retries with backoff
            self._pubsub = pubsub
        if channels:
            since = max(0, self.fanout.last_id - REPLAY_LOOKBACK_IDS)
            for event in await self._events_since(channels, since, None):
                self._dispatch(event)
        self.connected = True
        LISTENER_CONNECTED.set(1)
        LISTENER_RECONNECTS.inc()
        log.info("pubsub redis subscriber reconnected")

    async def _events_since(
        self, channels: list[str], since: int, limit: int | None
    ) -> list[Event]:
        events: list[Event] = []
        for channel in channels:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(
                KEY_PREFIX + channel, min=f"({since}-0", max="+", count=limit
            )  # type: ignore[assignment]
            for entry_id, fields in entries:
                event_id = int(entry_id.split(b"-")[0])
                events.append(Event(event_id, channel, orjson.loads(fields[b"p"])))
        events.sort(key=lambda event: event.id)
        return events[:limit] if limit else events

    def _dispatch(self, event: Event) -> None:
        emptied = self.fanout.dispatch(event)
        if emptied and self._pubsub is not None:
            task = asyncio.get_running_loop().create_task(self._unsubscribe_channels(emptied))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _unsubscribe_channels(self, channels: list[str]) -> None:
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(RedisConnectionError, OSError):
                    await self._pubsub.unsubscribe(*("pgfirst." + c for c in channels))
