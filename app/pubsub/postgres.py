"""The Postgres broker: an events table for durability, LISTEN/NOTIFY for delivery.

Publishing inserts the event and calls ``pg_notify`` in one statement. Run on the caller's
connection, it is part of the caller's transaction: PostgreSQL delivers notifications only
at COMMIT and drops them on ROLLBACK, so subscribers never hear of data that does not exist.
The notification carries ``"<id> <payload json>"`` when that fits comfortably under
NOTIFY's 8,000-byte limit, else just ``"<id>"`` and the listener reads the payload row.

Notifications arrive through the process's notifier (its one LISTEN connection), which
listens on a channel while at least one local subscriber wants it. When that connection
drops (server restart, network cut, pg_terminate_backend) the notifier reconnects and says
so; the broker then replays from the table what was published meanwhile, and the
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

from app.db import Connection, Database
from app.notifier import Notifier, Unlisten
from app.pubsub import in_caller_transaction
from app.pubsub.fanout import Event, Fanout, Subscription

log = logging.getLogger(__name__)

NOTIFY_PREFIX = "pgfirst."
INLINE_PAYLOAD_BYTES = 7_000  # NOTIFY refuses 8,000 bytes and more; keep a margin
REPLAY_LOOKBACK_IDS = 1_000

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
        notifier: Notifier,
        *,
        queue_size: int = 1_000,
        replay_limit: int = 1_000,
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.fanout = Fanout(queue_size=queue_size)
        self.replay_limit = replay_limit
        self._unlisten: dict[str, Unlisten] = {}
        self._forget_state: Any = None
        self._missed = False  # the notifier was lost since the last replay
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
        self._forget_state = self.notifier.on_state(self._on_notifier_state)
        self._dispatcher = asyncio.create_task(self._dispatch_inbox(), name="pubsub-dispatch")

    async def stop(self) -> None:
        if self._forget_state is not None:
            self._forget_state()
        tasks = [self._dispatcher, *self._background]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        self.fanout.close_all()
        for unlisten in self._unlisten.values():
            await unlisten()
        self._unlisten.clear()

    def health(self) -> tuple[str, bool]:
        return self.notifier.health()

    # --- publish / subscribe -------------------------------------------------------------

    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int:
        body = orjson.dumps(payload).decode()
        args = (channel, body, NOTIFY_PREFIX + channel, INLINE_PAYLOAD_BYTES)
        if conn is not None and in_caller_transaction(self.db, conn):
            # In the caller's transaction: the row and the NOTIFY commit with it.
            row = await conn.fetchrow(PUBLISH_EVENT, *args)
        else:
            async with self.db.acquire() as own:
                row = await own.fetchrow(PUBLISH_EVENT, *args)
        assert row is not None
        return int(row["id"])

    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription:
        subscription, new_channels = self.fanout.add(channels)
        try:
            for channel in new_channels:
                self._unlisten[channel] = await self.notifier.listen(
                    NOTIFY_PREFIX + channel, self._on_notification
                )
            if since is not None:
                subscription.preload(await self._events_since(channels, since))
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        await self._unlisten_channels(self.fanout.remove(subscription))

    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int:
        return await prune_events(self.db, older_than_seconds, batch)

    # --- delivery ------------------------------------------------------------------------

    def _on_notifier_state(self, connected: bool) -> None:
        if not connected:
            self._missed = True
            return
        if self._missed:
            self._missed = False
            self._spawn(self._replay_gap())

    async def _replay_gap(self) -> None:
        channels = self.fanout.channels()
        if not channels:
            return
        since = max(0, self.fanout.last_id - REPLAY_LOOKBACK_IDS)
        try:
            async with self._dispatching:
                for event in await self._events_since(channels, since, limit=None):
                    self._dispatch(event)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("pubsub: replay after reconnect failed: %s", exc)
            self._missed = True  # try again at the next reconnect

    async def _unlisten_channels(self, channels: list[str]) -> None:
        for channel in channels:
            unlisten = self._unlisten.pop(channel, None)
            if unlisten is not None:
                await unlisten()

    def _on_notification(self, topic: str, message: str) -> None:
        event_id_text, _, body = message.partition(" ")
        if event_id_text.isdigit():
            self._inbox.put_nowait((int(event_id_text), topic.removeprefix(NOTIFY_PREFIX), body))

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
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
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
            self._spawn(self._unlisten_channels(emptied))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
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
