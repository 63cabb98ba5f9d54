"""Connection pools, the one transaction helper, and read routing — on asyncpg.

``Database`` owns a pool on the primary and, when ``DATABASE_REPLICA_URLS`` is set, one per
replica. Code asks for what it needs and never which server it gets:

    async with db.acquire() as conn:            # primary
    async with db.acquire(read=True) as conn:   # a fit replica if any, else the primary
    async with db.transaction() as conn:        # primary, BEGIN ... COMMIT/ROLLBACK

Only reads that tolerate replication lag (feeds, search, stats) may use ``read=True``.
Inside an HTTP request it honours read-your-writes: see ``app.db.replicas`` (which
replica, health and lag) and ``app.db.routing`` (what the request and the client wrote).

Every connection gets codecs for json/jsonb (orjson) and, once the extension exists, for
pgvector's ``vector``. With ``DB_POOL_MODE=pgbouncer`` asyncpg's statement cache is off,
since PgBouncer in transaction mode cannot keep server-side prepared statements per client
(before 1.21 not at all; docs/scaling.md), and the pool skips its reset query on release
(``UNLISTEN *``, ``RESET ALL``...): through the pooler it would run on whichever server
connection is free, resetting nothing of this client's — and pooled code keeps no session
state (``app db check-pooler`` looks for it).

The time spent waiting for a free connection is measured on every acquire: a pool that is
too small shows up there (the "connection pool exhausted" signal) before it shows up as
timeouts. The wait is bounded (``DB_POOL_ACQUIRE_TIMEOUT``): past it asyncpg raises
TimeoutError, which a request answers with 503 and Retry-After (the server sheds load
instead of queueing work its clients have given up on) and a worker retries with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from pgvector.asyncpg import register_vector

from app.config import Settings
from app.db import routing
from app.db.replicas import ReplicaSet
from app.observability.metrics import DB_POOL_ACQUIRE_SECONDS

log = logging.getLogger(__name__)

Record: TypeAlias = asyncpg.Record
# What code receives: a pooled proxy or a direct connection; both speak the same API.
Connection: TypeAlias = "asyncpg.Connection[Record] | PoolConnectionProxy[Record]"
Isolation: TypeAlias = Literal["read_committed", "serializable", "repeatable_read"]
AfterCommitHook: TypeAlias = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class PoolStats:
    role: str  # "primary" or "replica-N"
    size: int
    idle: int
    min_size: int
    max_size: int

    @property
    def in_use(self) -> int:
        return self.size - self.idle


class Database:
    """The process's pools. Build with ``await Database.connect(settings)``."""

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        primary: asyncpg.Pool,
        replicas: ReplicaSet | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.primary = primary
        self.replicas = replicas
        self._after_commit: dict[int, list[AfterCommitHook]] = {}

    @classmethod
    async def connect(cls, settings: Settings, dsn: str | None = None) -> Database:
        """Open the pools. ``dsn`` defaults to DATABASE_URL, or the embedded server."""
        if dsn is None:
            from app.db.urls import resolve_database_url

            dsn = await asyncio.to_thread(resolve_database_url, settings)
        primary = await create_pool(settings, dsn)
        if not settings.database_replica_urls:
            return cls(settings, dsn, primary)
        # No connection is opened up front: a replica that is down at startup only keeps
        # reads on the primary until it answers.
        pools = [
            (url, await create_pool(settings, url, min_size=0))
            for url in settings.database_replica_urls
        ]
        replicas = ReplicaSet(settings, primary, pools)
        try:
            await replicas.start()
        except BaseException:
            await asyncio.gather(primary.close(), *(pool.close() for _, pool in pools))
            raise
        return cls(settings, dsn, primary, replicas)

    async def close(self) -> None:
        pools = [self.primary]
        if self.replicas is not None:
            await self.replicas.close()
            pools += [replica.pool for replica in self.replicas.replicas]
        await asyncio.gather(*(pool.close() for pool in pools))

    @asynccontextmanager
    async def acquire(self, *, read: bool = False) -> AsyncIterator[Connection]:
        """A connection from the primary pool (or a fit replica's, for ``read=True``)."""
        started = perf_counter()
        chosen = await self.replicas.acquire_read() if read and self.replicas else None
        if chosen is None:
            timeout = self.settings.db_pool_acquire_timeout
            pool, conn = self.primary, await self.primary.acquire(timeout=timeout)
        else:
            pool, conn = chosen
        DB_POOL_ACQUIRE_SECONDS.observe(perf_counter() - started)
        try:
            yield conn
        finally:
            await pool.release(conn)

    @asynccontextmanager
    async def transaction(
        self, *, isolation: Isolation | None = None, readonly: bool = False
    ) -> AsyncIterator[Connection]:
        """A primary connection inside BEGIN; commits on exit, rolls back on an exception.

        Work registered with ``after_commit(conn, hook)`` runs once COMMIT has succeeded
        and never after a rollback (e.g. a Redis publish that must follow the data).
        """
        async with self.acquire() as conn:
            hooks: list[AfterCommitHook] = []
            self._after_commit[id(conn)] = hooks
            try:
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    yield conn
            finally:
                del self._after_commit[id(conn)]
        if not readonly:
            routing.note_commit()
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.exception("after-commit hook failed")

    def owns_transaction(self, conn: Connection) -> bool:
        """Whether ``conn`` is inside this Database's ``transaction()``."""
        return id(conn) in self._after_commit

    def after_commit(self, conn: Connection, hook: AfterCommitHook) -> bool:
        """Run ``hook`` after the ``transaction()`` that ``conn`` belongs to commits.

        Returns False when ``conn`` is not inside this Database's ``transaction()``.
        """
        hooks = self._after_commit.get(id(conn))
        if hooks is None:
            return False
        hooks.append(hook)
        return True

    @property
    def direct_url(self) -> str | None:
        """Where a connection that must reach the server itself goes: DATABASE_DIRECT_URL,
        else the primary — unless that is a transaction pooler (None then)."""
        if self.settings.database_direct_url:
            return self.settings.database_direct_url
        return None if self.settings.db_pool_mode == "pgbouncer" else self.dsn

    async def connect_direct(self) -> asyncpg.Connection[Record]:
        """One connection outside any pool, on ``direct_url``.

        For LISTEN and session-level settings, which PgBouncer would not keep and which a
        pool's reset query (UNLISTEN *, RESET ALL) would undo. Raises when there is no
        direct URL (behind PgBouncer without DATABASE_DIRECT_URL).
        """
        dsn = self.direct_url
        if dsn is None:
            raise RuntimeError("DB_POOL_MODE=pgbouncer without DATABASE_DIRECT_URL")
        conn: asyncpg.Connection[Record] = await asyncpg.connect(
            dsn,
            timeout=self.settings.db_connect_timeout,
            command_timeout=self.settings.db_command_timeout,
            server_settings={"application_name": "pgfirst-direct"},
        )
        await _init_connection(conn)
        return conn

    async def wal_position(self) -> int:
        """The primary's WAL insert position: every commit so far is at or before it."""
        async with self.acquire() as conn:
            position: int = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
        return position

    def stats(self) -> list[PoolStats]:
        pools = [("primary", self.primary)] + [
            (replica.name, replica.pool)
            for replica in (self.replicas.replicas if self.replicas else [])
        ]
        return [
            PoolStats(
                role=role,
                size=pool.get_size(),
                idle=pool.get_idle_size(),
                min_size=pool.get_min_size(),
                max_size=pool.get_max_size(),
            )
            for role, pool in pools
        ]


async def create_pool(settings: Settings, dsn: str, *, min_size: int | None = None) -> asyncpg.Pool:
    pgbouncer = settings.db_pool_mode == "pgbouncer"
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        statement_cache_size=0 if pgbouncer else 1024,
        init=_init_connection,
        reset=_no_session_reset if pgbouncer else None,
        server_settings={"application_name": "pgfirst"},
    )
    assert pool is not None
    return pool


async def _init_connection(conn: asyncpg.Connection[Record]) -> None:
    # Binary format: no text escaping round trip, and COPY (binary) can carry jsonb.
    # jsonb's binary form is a version byte (1) followed by the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="binary"
    )
    # Before the first migration the extension does not exist yet.
    if await conn.fetchval("SELECT to_regtype('vector') IS NOT NULL"):
        await register_vector(conn)


async def _no_session_reset(conn: asyncpg.Connection[Record]) -> None:
    # asyncpg still rolls back an open transaction before calling this.
    return None


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])
