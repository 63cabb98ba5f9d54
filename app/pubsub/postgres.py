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

Identifiers are assigned at INSERT, not at COMMIT, so events can commit out of id order. A
replay after event N therefore also returns the earlier events whose transactions were still
running when N was inserted (each row keeps its transaction and the oldest one running,
migration 0016), up to ``delivery.REPLAY_LOOKBACK_IDS`` ids back: a resume may repeat an
event, it does not miss one. Limits: NOTIFY takes a cluster-wide lock
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
from app.notifier import Notifier
from app.pubsub import in_caller_transaction
from app.pubsub.delivery import REPLAY_LOOKBACK_IDS, NotifiedBroker
from app.pubsub.fanout import Event

log = logging.getLogger(__name__)

NOTIFY_PREFIX = "pgfirst."
INLINE_PAYLOAD_BYTES = 7_000  # NOTIFY refuses 8,000 bytes and more; keep a margin

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
# Standalone publishes that arrive while a batch is in flight go out together in the next
# one: one statement, one commit (NOTIFY's cluster-wide commit lock is taken once per
# transaction, not per notification). Ids come from the identity in insertion order, so
# the n-th smallest id belongs to the n-th input row; the notifications are sent in id
# order (a volatile function in the target list runs after ORDER BY), which is the order
# listeners receive them in. set_config(..., true) lasts until this statement's own commit.
PUBLISH_BATCH = """
WITH inserted AS (
    INSERT INTO events (channel, payload)
    SELECT e.channel, e.body::jsonb
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(channel, body, n)
    ORDER BY e.n
    RETURNING id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM inserted
)
SELECT numbered.id, pg_notify(
    $3 || e.channel,
    CASE WHEN octet_length(e.body) <= $4 THEN numbered.id || ' ' || e.body
         ELSE numbered.id::text END
)
FROM numbered
JOIN unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(channel, body, n) USING (n)
CROSS JOIN (SELECT set_config('synchronous_commit', $5, true)) AS durability
ORDER BY numbered.id
"""
PUBLISH_BATCH_MAX = 500
SELECT_PAYLOAD = "SELECT payload FROM events WHERE id = $1"
# The events after event $2 and, before it, those of other transactions that were still
# running when $2 was inserted (xid at or past $2's horizon, migration 0016): ids are
# assigned at INSERT, so such an event can have committed — and been delivered live — after
# $2, and a client that saw $2 may have missed it. They come first (ordered by id) and may
# repeat one the client saw (a transaction that ran beside $2's and committed first): at
# least once, never lost. $2's own transaction committed with it, so its events are not
# repeated. Looks back at most $4 ids; without $2's row (pruned, or older than 0016) only
# what follows $2.
SELECT_SINCE = """
WITH last_seen AS (SELECT xid, horizon FROM events WHERE id = $2)
SELECT id, channel, payload
FROM events
WHERE channel = ANY($1::text[]) AND id > $2 - $4
  AND (id > $2 OR (xid >= (SELECT horizon FROM last_seen)
                   AND xid <> (SELECT xid FROM last_seen)))
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


class PostgresBroker(NotifiedBroker):
    topic_prefix = NOTIFY_PREFIX
    # InternalClientError: asyncpg's word for a pooled connection the server ended while
    # it sat idle (a restart), which is not an InterfaceError.
    replay_errors = (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )

    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        *,
        queue_size: int = 1_000,
        replay_limit: int = 1_000,
        synchronous_commit: bool = False,
    ) -> None:
        super().__init__(notifier, queue_size=queue_size, replay_limit=replay_limit)
        self.db = db
        self.synchronous_commit = "on" if synchronous_commit else "off"
        self._unsent: list[tuple[str, str, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None
        # Notifications are handled in arrival (= commit) order by one task.
        self._inbox: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            async with self.db.acquire() as conn:
                self.fanout.last_id = await conn.fetchval(SELECT_LAST_ID)
        except asyncpg.UndefinedTableError:
            # Schema behind the code: serve anyway; /readyz reports the migrations.
            log.warning("pubsub: events table missing; run `app migrate`")
        self._watch_notifier()
        self._dispatcher = asyncio.create_task(self._dispatch_inbox(), name="pubsub-dispatch")

    async def stop(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)  # publishes in flight
        await self._stop_delivery(self._dispatcher)

    async def publish(
        self, channel: str, payload: dict[str, Any], *, conn: Connection | None = None
    ) -> int:
        body = orjson.dumps(payload).decode()
        if conn is not None and in_caller_transaction(self.db, conn):
            # In the caller's transaction: the row and the NOTIFY commit with it.
            args = (channel, body, NOTIFY_PREFIX + channel, INLINE_PAYLOAD_BYTES)
            row = await conn.fetchrow(PUBLISH_EVENT, *args)
            assert row is not None
            return int(row["id"])
        sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._unsent.append((channel, body, sent))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_batches(), name="pubsub-publish")
        return await sent

    async def _send_batches(self) -> None:
        """Publish what is waiting, a batch per statement, until nothing is."""
        try:
            while self._unsent:
                batch = self._unsent[:PUBLISH_BATCH_MAX]
                del self._unsent[:PUBLISH_BATCH_MAX]
                try:
                    ids = await self._insert_batch(batch)
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][2], error=exc)
                        continue
                    # One bad event (a channel the table refuses, a NUL in a string) must
                    # not fail the others: publish them one by one.
                    for event in batch:
                        try:
                            [event_id] = await self._insert_batch([event])
                        except Exception as single:
                            _settle(event[2], error=single)
                        else:
                            _settle(event[2], event_id)
                    continue
                for event_id, (_, _, sent) in zip(ids, batch, strict=True):
                    _settle(sent, event_id)
        except BaseException:
            # Cancelled (the broker is stopping): nobody may wait forever.
            for _, _, sent in self._unsent:
                sent.cancel()
            self._unsent.clear()
            raise
        finally:
            self._sender = None

    async def _insert_batch(self, batch: list[tuple[str, str, asyncio.Future[int]]]) -> list[int]:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                PUBLISH_BATCH,
                [channel for channel, _, _ in batch],
                [body for _, body, _ in batch],
                NOTIFY_PREFIX,
                INLINE_PAYLOAD_BYTES,
                self.synchronous_commit,
            )
        return [int(row["id"]) for row in rows]

    async def prune(self, older_than_seconds: float, batch: int = 10_000) -> int:
        return await prune_events(self.db, older_than_seconds, batch)

    def _on_message(self, topic: str, message: str) -> None:
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
                except self.replay_errors as exc:
                    log.warning("pubsub could not read event %s: %s", event_id, exc)
                    continue
                if payload is not None:
                    self._dispatch(Event(event_id, channel, payload))

    async def _events_since(
        self, channels: list[str], since: int, limit: int | None
    ) -> list[Event]:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                SELECT_SINCE, channels, since, limit or 1_000_000, REPLAY_LOOKBACK_IDS
            )
        return [Event(row["id"], row["channel"], row["payload"]) for row in rows]


def _settle(
    sent: asyncio.Future[int], event_id: int = 0, *, error: Exception | None = None
) -> None:
    if sent.done():  # the publisher was cancelled and no longer waits
        return
    if error is not None:
        sent.set_exception(error)
    else:
        sent.set_result(event_id)


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
