"""The Redis broker (PUBSUB_BACKEND=redis): same semantics, Redis doing the work.

A Lua script publishes atomically: INCR a global sequence (the event id), XADD the event to
a per-channel stream capped by MAXLEN and expiring after the retention (for replay), and
PUBLISH ``"<id> <payload>"`` for live delivery. Ids come from one sequence inside Redis, so
they are strictly in delivery order and replay by id is exact. Payloads have no 8 KB limit.

``publish(conn=...)`` keeps the Postgres contract — delivered on commit, never on rollback —
by deferring the Redis call until the ``db.transaction()`` holding ``conn`` commits. The
data is committed by then, so its event must follow even when Redis is away: a publish that
fails there is held in memory (at most PENDING_MAX events, oldest dropped beyond that) and
retried in order with backoff until Redis answers. It then gets an id larger than any
delivered meanwhile, so clients resuming by id miss nothing; only a process that exits
while holding events loses them.

Live events arrive through the process's Redis notifier (one subscriber connection shared
with the cache); when it reports a reconnect, the broker replays the gap from the streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.db import Connection, Database
from app.notifier import Notifier
from app.pubsub import in_caller_transaction
from app.pubsub.delivery import NotifiedBroker
from app.pubsub.fanout import Event

log = logging.getLogger(__name__)

KEY_PREFIX = "pgfirst:events:"
SEQUENCE_KEY = "pgfirst:events-seq"
CHANNEL_PREFIX = "pgfirst."
STREAM_MAX_LEN = 10_000
PENDING_MAX = 10_000  # committed events held while Redis is away
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 2.0

PUBLISH_SCRIPT = """
local id
if redis.call('EXISTS', KEYS[1]) == 1 then
    id = redis.call('INCR', KEYS[1])
else
    local now = redis.call('TIME')
    id = tonumber(now[1]) * 1000000 + tonumber(now[2])
    redis.call('SET', KEYS[1], string.format('%d', id))
end
id = string.format('%d', id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'p', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], id .. ' ' .. ARGV[1])
return id
"""
# A missing sequence starts from the server's clock in microseconds, not from 1: when Redis
# loses its data (a restart without persistence, a failover, a flush) the ids it hands out
# next are still larger than every id before, so processes that remember recent ids (the
# fan-out drops an id it has seen) and clients resuming by Last-Event-ID miss nothing. It
# holds while fewer than a million events a second were published on average, and the ids
# stay below 2**53 (exact in Lua's doubles and in JavaScript) until the year 2255.


class RedisBroker(NotifiedBroker):
    topic_prefix = CHANNEL_PREFIX
    replay_errors = (RedisError, OSError)

    def __init__(
        self,
        db: Database,
        redis: Redis,
        notifier: Notifier,
        *,
        queue_size: int = 1_000,
        replay_limit: int = 1_000,
        retention_seconds: int = 86_400,
        stream_max_len: int = STREAM_MAX_LEN,
    ) -> None:
        super().__init__(notifier, queue_size=queue_size, replay_limit=replay_limit)
        self.db = db
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.stream_max_len = stream_max_len
        self._publish = redis.register_script(PUBLISH_SCRIPT)
        self._pending: deque[tuple[str, str]] = deque(maxlen=PENDING_MAX)
        self._retrier: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._watch_notifier()

    async def stop(self) -> None:
        if self._pending:
            log.error("pubsub: stopping with %d events Redis never took", len(self._pending))
        await self._stop_delivery(self._retrier)

    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int | None:
        body = orjson.dumps(payload).decode()
        if conn is not None and in_caller_transaction(self.db, conn):
            self.db.after_commit(conn, lambda: self._publish_committed(channel, body))
            return None
        return await self._publish_now(channel, body)

    async def _publish_committed(self, channel: str, body: str) -> None:
        if not self._pending:  # else behind the held ones, to keep their order
            try:
                await self._publish_now(channel, body)
                return
            except self.replay_errors as exc:
                log.warning("pubsub: Redis unavailable (%s); holding events until it is back", exc)
        if len(self._pending) == PENDING_MAX:
            log.error("pubsub: %d events held for Redis; dropping the oldest", PENDING_MAX)
        self._pending.append((channel, body))
        if self._retrier is None:
            self._retrier = asyncio.get_running_loop().create_task(self._publish_pending())

    async def _publish_pending(self) -> None:
        delay = RETRY_FIRST_DELAY
        try:
            while self._pending:
                channel, body = self._pending[0]
                try:
                    await self._publish_now(channel, body)
                except self.replay_errors:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_DELAY)
                    continue
                self._pending.popleft()
                delay = RETRY_FIRST_DELAY
        finally:
            self._retrier = None

    async def _publish_now(self, channel: str, body: str) -> int:
        keys = [SEQUENCE_KEY, KEY_PREFIX + channel, CHANNEL_PREFIX + channel]
        args: list[str | int] = [body, self.stream_max_len, self.retention_seconds]
        return int(await self._publish(keys=keys, args=args))

    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int:
        """Nothing to delete: every publish trims its stream (MAXLEN ~) and renews its
        EXPIRE, so a stream idle for the retention disappears on its own."""
        return 0

    def _on_message(self, topic: str, message: str) -> None:
        event_id_text, _, body = message.partition(" ")
        channel = topic.removeprefix(CHANNEL_PREFIX)
        self._dispatch(Event(int(event_id_text), channel, orjson.loads(body)))

    async def _events_since(
        self, channels: list[str], since: int, limit: int | None
    ) -> list[Event]:
        events: list[Event] = []
        for channel in channels:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(
                KEY_PREFIX + channel, min=f"({since}-0", max="+", count=limit
            )  # type: ignore[assignment]
            for entry_id, fields in entries:
                event_id = int(entry_id.split(b"-")[0])
                events.append(Event(event_id, channel, orjson.loads(fields[b"p"])))
        events.sort(key=lambda event: event.id)
        return events[:limit] if limit else events
