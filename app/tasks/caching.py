"""Caching of the task and project reads: one data version per user, kept in Postgres.

Every write to a user's tasks or projects bumps that user's row of ``user_data_versions``
in the write's own transaction (``DataVersions.bump``): the version commits with the data
or not at all. Reads use it twice:

- in the ETag (with the user, the resource and the query string), so ``If-None-Match`` is
  answered 304 before anything else is read;
- in the key of a cached list page (``tasks:list:<user>:<version>:<kind>:<query hash>``),
  so a write makes every cached page of that user unreachable at once; the old pages
  expire on their own (CACHE_LIST_TTL_SECONDS).

The shared cache never holds a version, so a cache that fails (down, slow) costs misses
and nothing else: it cannot make changed data look unchanged.

Reading the version is a primary-key lookup on the primary (a lagging replica would hand
out an old version, and with it a 304 for changed data). To spare that round trip on
every GET, each process keeps a copy of the versions it read, trusted only while its
notifier is connected and listening on ``pgfirst.data_versions``:

- the bump sends ``pg_notify('pgfirst.data_versions', '<user id>')`` in the same
  statement; PostgreSQL delivers it at COMMIT, atomically with the new version (never
  after a ROLLBACK), and every process drops that user's copy when it arrives. Several
  writes of one user in one transaction send one notification: identical payloads in a
  transaction collapse;
- the writing process drops its own copy right after its COMMIT
  (``Database.after_commit``), so its next read never waits for the notification;
- a read that overlapped a drop does not keep what it read (its value may predate the
  write): a generation counter, as the cache's L1 uses;
- when the notifier loses its connection the copy is emptied and bypassed, every read
  going to Postgres, until it listens again (PostgreSQL never replays what was sent
  meanwhile). Behind PgBouncer without DATABASE_DIRECT_URL (polling mode) there is no copy.

Another process sees a new version once the notification reaches it, about a millisecond
after the COMMIT (docs/benchmarks.md, "L1 invalidation delay"): that bounds how long it
may still answer 304 for data changed elsewhere.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from app.cache.http import weak_etag
from app.db import Connection, Database
from app.notifier import Notifier, Unlisten

TOPIC = "pgfirst.data_versions"
KEPT_USERS = 10_000  # the copy's bound: ~100 bytes a user

READ_VERSION = "SELECT version FROM user_data_versions WHERE user_id = $1"
# The bump and its notification in one round trip, both part of the caller's transaction.
# A user without a row reads as version 0; the first bump inserts 1 (the column default).
BUMP_VERSION = """
WITH bumped AS (
    INSERT INTO user_data_versions AS v (user_id) VALUES ($1)
    ON CONFLICT (user_id) DO UPDATE SET version = v.version + 1
    RETURNING v.version
)
SELECT version, pg_notify($2, $1::text) FROM bumped
"""


def list_key(user_id: int, version: int, kind: str, query: str) -> str:
    digest = hashlib.blake2b(query.encode(), digest_size=10).hexdigest()
    return f"tasks:list:{user_id}:{version}:{kind}:{digest}"


def version_etag(user_id: int, version: int, *resource: object) -> str:
    """The ETag of one of the user's resources at ``version`` (users' versions overlap:
    the user id keeps one user's tag from matching another's)."""
    return weak_etag(user_id, version, *resource)


class DataVersions:
    """Per-user data versions: read (through the in-process copy) and bumped.

    One per process, next to its notifier: ``start()`` listens, ``stop()`` lets go. The
    web app builds it in the tasks router's lifespan and keeps it in ``app.state`` — not
    on ``Services``, which is frozen, has slots (no weak references) and is shared with
    code that needs no versions; its lifetime is the app's, the one that serves the reads.
    """

    def __init__(self, db: Database, notifier: Notifier, *, kept: int = KEPT_USERS) -> None:
        self._db = db
        self._notifier = notifier
        self._kept = kept
        self._copy: OrderedDict[int, int] = OrderedDict()
        self._listening = False  # LISTEN registered (only then can the copy be trusted)
        self._trusted = False
        # Bumped by every drop: a read that saw it change while in flight keeps nothing.
        self._generation = 0
        self._unlisten: Unlisten | None = None
        self._forget_state: Callable[[], None] | None = None

    async def start(self) -> None:
        self._forget_state = self._notifier.on_state(self._on_state)
        self._unlisten = await self._notifier.listen(TOPIC, self._on_message)
        self._listening = True
        self._on_state(self._notifier.connected)

    async def stop(self) -> None:
        self._listening = False
        self._on_state(False)
        if self._forget_state is not None:
            self._forget_state()
            self._forget_state = None
        if self._unlisten is not None:
            unlisten, self._unlisten = self._unlisten, None
            await unlisten()

    async def read(self, user_id: int) -> int:
        """The user's current version (0 before their first write)."""
        if self._trusted:
            version = self._copy.get(user_id)
            if version is not None:
                self._copy.move_to_end(user_id)
                return version
        generation = self._generation
        async with self._db.acquire() as conn:
            version = await conn.fetchval(READ_VERSION, user_id) or 0
        if self._trusted and generation == self._generation:
            self._copy[user_id] = version
            if len(self._copy) > self._kept:
                self._copy.popitem(last=False)
        return int(version)

    async def bump(self, conn: Connection, user_id: int) -> int:
        """Give the user a new version in ``conn``'s transaction; returns it.

        Inside ``db.transaction()`` this process's copy is dropped once COMMIT succeeds;
        on a connection outside any transaction the statement commits at once.
        """
        version = int(await conn.fetchval(BUMP_VERSION, user_id, TOPIC))

        async def drop() -> None:
            self._drop(user_id)

        if not self._db.after_commit(conn, drop):
            self._drop(user_id)
        return version

    @property
    def cached_users(self) -> int:
        return len(self._copy)

    def _drop(self, user_id: int) -> None:
        self._generation += 1
        self._copy.pop(user_id, None)

    def _forget_all(self) -> None:
        self._generation += 1
        self._copy.clear()

    def _on_message(self, topic: str, payload: str) -> None:
        if payload.isdigit():
            self._drop(int(payload))
        else:  # not a user id: forget every user rather than guess
            self._forget_all()

    def _on_state(self, connected: bool) -> None:
        # Whatever was sent while the connection was down is lost: start from nothing.
        self._forget_all()
        self._trusted = connected and self._listening
