"""The Postgres broker: an events table for durability, LISTEN/NOTIFY for delivery.

Publishing inserts the event and calls ``pg_notify`` in one statement. Run on the caller's
connection, it is part of the caller's transaction: PostgreSQL delivers notifications only
at COMMIT and drops them on ROLLBACK, so subscribers never hear of data that does not exist.
The notification carries ``"<id> <payload json>"`` when that fits comfortably under
NOTIFY's 8,000-byte limit, else just ``"<id>"`` and the listener reads the payload row.

Each process keeps ONE dedicated listening connection, outside every pool (a pool's reset
would UNLISTEN it), on DATABASE_DIRECT_URL (PgBouncer in transaction mode cannot LISTEN).
It LISTENs on a channel while at least one local subscriber wants it. When the connection
drops (server restart, network cut, pg_terminate_backend) the listener reconnects with
backoff, LISTENs again and replays from the table what was published meanwhile; the
fan-out's id memory turns the overlap into no duplicates.

Limits: identifiers are assigned at INSERT, not at COMMIT, so a replay by id can miss an
event whose transaction committed long after later ids (a replay looks back
``REPLAY_LOOKBACK_IDS`` ids to cover ordinary overlap). NOTIFY takes a cluster-wide lock
at commit, so very write-heavy publishers serialise there: that is the signal to set
PUBSUB_BACKEND=redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter, Gauge

from app.db import Connection, Database
from app.pubsub.fanout import Event, Fanout, Subscription

log = logging.getLogger(__name__)

NOTIFY_PREFIX = "pgfirst."
INLINE_PAYLOAD_BYTES = 7_000  # NOTIFY refuses 8,000 bytes and more; keep a margin
REPLAY_LOOKBACK_IDS = 1_000

LISTENER_CONNECTED = Gauge("pubsub_listener_connected", "1 while the LISTEN connection is up.")
LISTENER_RECONNECTS = Counter("pubsub_listener_reconnects_total", "LISTEN connection re-opened.")

# Store the event and notify in one round trip; the CASE keeps NOTIFY under its size limit.
PUBLISH_EVENT = """
WITH inserted AS (
    INSERT INTO events (channel, payload) VALUES ($1, $2::text::jsonb) RETURNING id
)
SELECT id, pg_notify(
    $3,
    CASE WHEN octet_length($2::text) <= $4 THEN id::text || ' ' || $2::text ELSE id::text END
)
FROM inserted
"""
SELECT_PAYLOAD = "SELECT payload FROM events WHERE id = $1"
SELECT_SINCE = """
SELECT id, channel, payload
FROM events
WHERE channel = ANY($1::text[]) AND id > $2
ORDER BY id
LIMIT $3
"""
SELECT_LAST_ID = "SELECT coalesce(max(id), 0) FROM events"
PRUNE_EVENTS = """
DELETE FROM events
WHERE id = ANY(ARRAY(
    SELECT id FROM events WHERE created_at < now() - make_interval(secs => $1) LIMIT $2
))
"""


class PostgresBroker:
    def __init__(
        self,
        db: Database,
        *,
        queue_size: int = 1_000,
        replay_limit: int = 1_000,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.db = db
        self.fanout = Fanout(queue_size=queue_size)
        self.replay_limit = replay_limit
        self.reconnect_max_delay = reconnect_max_delay
        self._listener: asyncpg.Connection[Any] | None = None
        self._listener_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._stopping = False
        self.connected = False
        # Notifications are handled in arrival (= commit) order by one task; a replay
        # holds the lock so that older replayed events go out before newer live ones.
        self._inbox: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        self._dispatching = asyncio.Lock()
        self._dispatcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            async with self.db.acquire() as conn:
                self.fanout.last_id = await conn.fetchval(SELECT_LAST_ID)
        except asyncpg.UndefinedTableError:
            # Schema behind the code: serve anyway; /readyz reports the migrations.
            log.warning("pubsub: events table missing; run `app migrate`")
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="pubsub-listener")
        self._dispatcher = asyncio.create_task(self._dispatch_inbox(), name="pubsub-dispatch")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [task for task in (self._supervisor, self._dispatcher) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.fanout.close_all()
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        self.connected = False
        LISTENER_CONNECTED.set(0)

    def health(self) -> tuple[str, bool]:
        return ("listening" if self.connected else "reconnecting"), self.connected

    # --- publish / subscribe -------------------------------------------------------------

    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int:
        body = orjson.dumps(payload).decode()
        args = (channel, body, NOTIFY_PREFIX + channel, INLINE_PAYLOAD_BYTES)
        if conn is not None:
            row = await conn.fetchrow(PUBLISH_EVENT, *args)
        else:
            async with self.db.acquire() as own:
                row = await own.fetchrow(PUBLISH_EVENT, *args)
        assert row is not None
        return int(row["id"])

    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription:
        subscription, new_channels = self.fanout.add(channels)
        try:
            if new_channels:
                await self._listen(new_channels)
            if since is not None:
                subscription.preload(await self._events_since(channels, since))
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        emptied = self.fanout.remove(subscription)
        if emptied:
            await self._unlisten(emptied)

    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int:
        return await prune_events(self.db, older_than_seconds, batch)

    # --- the listening connection --------------------------------------------------------

    async def _connect(self) -> None:
        conn = await self.db.connect_direct()
        conn.add_termination_listener(self._on_terminated)
        self._listener = conn
        self._lost.clear()
        async with self._listener_lock:
            for channel in self.fanout.channels():
                await conn.add_listener(NOTIFY_PREFIX + channel, self._on_notification)
        self.connected = True
        LISTENER_CONNECTED.set(1)

    async def _supervise(self) -> None:
        """Wait for the connection to drop; reconnect with backoff and replay the gap."""
        while not self._stopping:
            await self._lost.wait()
            self.connected = False
            LISTENER_CONNECTED.set(0)
            delay = 0.05
            while not self._stopping:
                try:
                    await self._connect()
                    LISTENER_RECONNECTS.inc()
                    await self._replay_gap()
                    log.info("pubsub listener reconnected")
                    break
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("pubsub listener reconnect failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max_delay)

    def _on_terminated(self, conn: object) -> None:
        if not self._stopping:
            log.warning("pubsub listener connection lost")
            self._lost.set()

    async def _replay_gap(self) -> None:
        channels = self.fanout.channels()
        if not channels:
            return
        since = max(0, self.fanout.last_id - REPLAY_LOOKBACK_IDS)
        async with self._dispatching:
            for event in await self._events_since(channels, since, limit=None):
                self._dispatch(event)

    async def _listen(self, channels: list[str]) -> None:
        async with self._listener_lock:
            if self._listener is None or self._listener.is_closed():
                return  # the supervisor LISTENs on every channel when it reconnects
            for channel in channels:
                await self._listener.add_listener(NOTIFY_PREFIX + channel, self._on_notification)

    async def _unlisten(self, channels: list[str]) -> None:
        async with self._listener_lock:
            if self._listener is None or self._listener.is_closed():
                return
            for channel in channels:
                try:
                    await self._listener.remove_listener(
                        NOTIFY_PREFIX + channel, self._on_notification
                    )
                except (OSError, asyncpg.PostgresError):
                    return  # connection going away; nothing left to unlisten

    def _on_notification(
        self,
        conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
        pid: int,
        channel: str,
        message: object,
    ) -> None:
        event_id_text, _, body = str(message).partition(" ")
        self._inbox.put_nowait((int(event_id_text), channel.removeprefix(NOTIFY_PREFIX), body))

    async def _dispatch_inbox(self) -> None:
        while True:
            event_id, channel, body = await self._inbox.get()
            async with self._dispatching:
                if self.fanout.seen(event_id):
                    continue
                if body:
                    self._dispatch(Event(event_id, channel, orjson.loads(body)))
                    continue
                # Too large to travel in the notification: read the row, on a pooled
                # connection (the listener must stay idle to receive).
                try:
                    async with self.db.acquire() as conn:
                        payload = await conn.fetchval(SELECT_PAYLOAD, event_id)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("pubsub could not read event %s: %s", event_id, exc)
                    continue
                if payload is not None:
                    self._dispatch(Event(event_id, channel, payload))

    async def _events_since(
        self, channels: list[str], since: int, *, limit: int | None = 0
    ) -> list[Event]:
        cap = self.replay_limit if limit == 0 else (limit or 1_000_000)
        async with self.db.acquire() as conn:
            rows = await conn.fetch(SELECT_SINCE, channels, since, cap)
        return [Event(row["id"], row["channel"], row["payload"]) for row in rows]

    def _dispatch(self, event: Event) -> None:
        emptied = self.fanout.dispatch(event)
        if emptied:
            task = asyncio.get_running_loop().create_task(self._unlisten(emptied))
            self._background.add(task)
            task.add_done_callback(self._background.discard)


async def prune_events(db: Database, older_than_seconds: float, batch: int = 10_000) -> int:
    """Delete events older than the retention, in bounded batches; returns the count."""
    deleted = 0
    while True:
        async with db.acquire() as conn:
            status = await conn.execute(PRUNE_EVENTS, older_than_seconds, batch)
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            return deleted
