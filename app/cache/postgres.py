"""The Postgres cache backend: an UNLOGGED table, one prepared statement per operation.

Statements run on a set of connections of their own (CACHE_POOL_SIZE), handed out from
a free list (connections.py) rather than an asyncpg pool: a pool's reset on release (RESET
ALL, UNLISTEN *, ...) is a server round trip that halved the GET/s of a busy cache, and its
acquire/release bookkeeping alone is a quarter of a read's time (docs/cache.md). Nothing
on these connections changes session state, so there is nothing to reset.

Writes announce themselves to other processes' L1 tiers with ``pg_notify`` in the same
statement as the write — one round trip, delivered by PostgreSQL when the write commits.
Each process hears them through its notifier (one LISTEN connection for every topic).

Expiry is checked at read time (``expires_at > now()``); expired rows stay until the purge
job (``purge_expired``) deletes them in batches. See migration 0011 for why there is no
index on expires_at.
"""

from __future__ import annotations

import logging

import asyncpg

from app.cache.coalesce import ReadCoalescer, Row
from app.cache.connections import ConnectionSet
from app.config import Settings
from app.db import Database, Record

log = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "pgfirst_cache"

# A NULL ttl (no expiry) makes now() + NULL = NULL.
GET_WITH_TTL = """
SELECT value, extract(epoch FROM expires_at - now())::float8 AS ttl FROM cache_entries
WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())
"""
GET_MANY = """
SELECT key, value FROM cache_entries
WHERE key = ANY($1::text[]) AND (expires_at IS NULL OR expires_at > now())
"""
GET_MANY_WITH_TTL = """
SELECT key, value, extract(epoch FROM expires_at - now())::float8 AS ttl FROM cache_entries
WHERE key = ANY($1::text[]) AND (expires_at IS NULL OR expires_at > now())
"""
# The NOTIFY rides in the same statement: a data-modifying CTE always runs to completion,
# and an empty channel name ($4 = '') skips the notification.
SET = """
WITH written AS (
    INSERT INTO cache_entries AS c (key, value, expires_at, written_at)
    VALUES ($1, $2, now() + make_interval(secs => $3), now())
    ON CONFLICT (key) DO UPDATE
    SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, written_at = now()
)
SELECT CASE WHEN $4 <> '' THEN pg_notify($4, $5) END
"""
SET_MANY = """
WITH written AS (
    INSERT INTO cache_entries AS c (key, value, expires_at, written_at)
    SELECT k, v, now() + make_interval(secs => $3), now()
    FROM unnest($1::text[], $2::bytea[]) AS t (k, v)
    ON CONFLICT (key) DO UPDATE
    SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, written_at = now()
)
SELECT CASE WHEN $4 <> '' THEN pg_notify($4, $5) END
"""
# Set only when absent (or expired): true when this call wrote the value.
ADD = """
INSERT INTO cache_entries AS c (key, value, expires_at, written_at)
VALUES ($1, $2, now() + make_interval(secs => $3), now())
ON CONFLICT (key) DO UPDATE
SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, written_at = now()
WHERE c.expires_at IS NOT NULL AND c.expires_at <= now()
RETURNING true
"""
DELETE = """
WITH deleted AS (
    DELETE FROM cache_entries WHERE key = ANY($1::text[]) RETURNING 1
)
SELECT count(*), CASE WHEN $2 <> '' THEN pg_notify($2, $3) END FROM deleted
"""
# A prefix is a key range [prefix, next) in the C-collated primary key: an index range
# scan whatever the plan cache decides (LIKE with a parameter would not use the index
# under a generic plan). Only a prefix of U+10FFFF characters has no upper bound.
DELETE_PREFIX = """
WITH deleted AS (
    DELETE FROM cache_entries WHERE key >= $1 AND key < $2 RETURNING 1
)
SELECT count(*), CASE WHEN $3 <> '' THEN pg_notify($3, $4) END FROM deleted
"""
DELETE_FROM = """
WITH deleted AS (
    DELETE FROM cache_entries WHERE key >= $1 AND $2::text IS NULL RETURNING 1
)
SELECT count(*), CASE WHEN $3 <> '' THEN pg_notify($3, $4) END FROM deleted
"""
# Counters are stored as the decimal text of the number (which is also its JSON), so a
# plain get() reads them. An expired counter restarts from zero with a fresh expiry. The
# announcement rides in the same statement, as for SET.
INCR = """
WITH counted AS (
    INSERT INTO cache_entries AS c (key, value, expires_at, written_at)
    VALUES ($1, convert_to($2::bigint::text, 'UTF8'), now() + make_interval(secs => $3), now())
    ON CONFLICT (key) DO UPDATE
    SET value = convert_to((
            CASE WHEN c.expires_at IS NULL OR c.expires_at > now()
                 THEN convert_from(c.value, 'UTF8')::bigint ELSE 0 END + $2::bigint
        )::text, 'UTF8'),
        expires_at = CASE WHEN c.expires_at IS NULL OR c.expires_at > now()
                          THEN c.expires_at ELSE EXCLUDED.expires_at END,
        written_at = now()
    RETURNING convert_from(value, 'UTF8')::bigint AS total
)
SELECT total, CASE WHEN $4 <> '' THEN pg_notify($4, $5) END FROM counted
"""
# A lock row is taken when absent or when its lease has run out (its holder died).
LOCK = """
INSERT INTO cache_locks AS l (key, token, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= now()
RETURNING true
"""
UNLOCK = "DELETE FROM cache_locks WHERE key = $1 AND token = $2"
PURGE_EXPIRED = """
DELETE FROM cache_entries
WHERE key = ANY(ARRAY(
    SELECT key FROM cache_entries WHERE expires_at <= now() LIMIT $1
))
"""
PURGE_LOCKS = "DELETE FROM cache_locks WHERE expires_at <= now()"
COUNT = "SELECT count(*) FROM cache_entries"
# Oldest-written first: a sequential scan and a top-N sort over a table the cap bounds.
EVICT_OLDEST = """
DELETE FROM cache_entries
WHERE key = ANY(ARRAY(
    SELECT key FROM cache_entries ORDER BY written_at LIMIT $1
))
"""


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (C collation).

    UTF-8 byte order is code point order, so bumping the last character by one code point
    bounds the range; a last character of U+10FFFF carries into the one before it.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if 0xD800 <= last <= 0xDFFF:  # surrogates are not valid in text
            last = 0xE000
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


class PostgresCacheBackend:
    name = "postgres"
    invalidation_topic = INVALIDATION_CHANNEL

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._pool: ConnectionSet | None = None
        self._reads: ReadCoalescer | None = None

    async def start(self) -> None:
        pgbouncer = self.settings.db_pool_mode == "pgbouncer"

        async def connect() -> asyncpg.Connection[Record]:
            conn: asyncpg.Connection[Record] = await asyncpg.connect(
                self.db.dsn,
                command_timeout=self.settings.db_command_timeout,
                statement_cache_size=0 if pgbouncer else 256,
                server_settings={"application_name": "pgfirst-cache"},
            )
            return conn

        pool = ConnectionSet(connect, self.settings.cache_pool_size)
        await pool.start()
        self._pool = pool
        self._reads = ReadCoalescer(pool, self._get_one, self._get_many_on)

    async def close(self) -> None:
        if self._reads is not None:
            await self._reads.close()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> ConnectionSet:
        if self._pool is None:
            raise RuntimeError("cache backend not started")
        return self._pool

    # --- reads ---------------------------------------------------------------------------

    @property
    def reads(self) -> ReadCoalescer:
        if self._reads is None:
            raise RuntimeError("cache backend not started")
        return self._reads

    # Single-key reads go through the coalescer (coalesce.py): at once on a free
    # connection, batched with the other waiting reads when every connection is busy.
    async def get(self, key: str) -> bytes | None:
        row = await self.reads.read(key)
        return None if row is None else row[0]

    async def get_with_ttl(self, key: str) -> tuple[bytes, float | None] | None:
        return await self.reads.read(key)

    async def _get_one(self, key: str) -> Row | None:
        row = await self.pool.fetchrow(GET_WITH_TTL, key)
        return None if row is None else (row[0], row[1])

    @staticmethod
    async def _get_many_on(conn: asyncpg.Connection[Record], keys: list[str]) -> dict[str, Row]:
        rows = await conn.fetch(GET_MANY_WITH_TTL, keys)
        return {row[0]: (row[1], row[2]) for row in rows}

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        rows = await self.pool.fetch(GET_MANY, keys)
        return {row[0]: row[1] for row in rows}

    async def get_many_with_ttl(self, keys: list[str]) -> dict[str, tuple[bytes, float | None]]:
        rows = await self.pool.fetch(GET_MANY_WITH_TTL, keys)
        return {row[0]: (row[1], row[2]) for row in rows}

    # --- writes (each may announce an invalidation) --------------------------------------

    async def set(self, key: str, value: bytes, ttl: float | None, announce: str) -> None:
        await self.pool.execute(SET, key, value, ttl, *self._notify(announce))

    async def set_many(self, items: dict[str, bytes], ttl: float | None, announce: str) -> None:
        keys, values = list(items), list(items.values())
        await self.pool.execute(SET_MANY, keys, values, ttl, *self._notify(announce))

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(await self.pool.fetchval(ADD, key, value, ttl))

    async def delete(self, keys: list[str], announce: str) -> int:
        row = await self.pool.fetchrow(DELETE, keys, *self._notify(announce))
        return int(row[0]) if row is not None else 0

    async def delete_prefix(self, prefix: str, announce: str) -> int:
        upper = prefix_upper_bound(prefix)
        sql = DELETE_PREFIX if upper is not None else DELETE_FROM
        row = await self.pool.fetchrow(sql, prefix, upper, *self._notify(announce))
        return int(row[0]) if row is not None else 0

    async def incr(self, key: str, amount: int, ttl: float | None, announce: str) -> int:
        try:
            total = await self.pool.fetchval(INCR, key, amount, ttl, *self._notify(announce))
        except asyncpg.InvalidTextRepresentationError:
            raise ValueError(f"cache value at {key!r} is not an integer") from None
        return int(total)

    # --- stampede locks ------------------------------------------------------------------

    async def try_lock(self, key: str, token: str, ttl: float) -> bool:
        return bool(await self.pool.fetchval(LOCK, key, token, ttl))

    async def unlock(self, key: str, token: str) -> None:
        await self.pool.execute(UNLOCK, key, token)

    # --- housekeeping --------------------------------------------------------------------

    async def purge_expired(self, batch: int) -> int:
        deleted = 0
        while True:
            status = await self.pool.execute(PURGE_EXPIRED, batch)
            count = int(status.split()[-1])
            deleted += count
            if count < batch:
                break
        await self.pool.execute(PURGE_LOCKS)
        return deleted

    async def enforce_cap(self, max_entries: int, batch: int) -> int:
        excess = int(await self.pool.fetchval(COUNT)) - max_entries
        evicted = 0
        while excess > 0:
            status = await self.pool.execute(EVICT_OLDEST, min(batch, excess))
            count = int(status.split()[-1])
            if count == 0:
                break
            evicted += count
            excess -= count
        return evicted

    async def count(self) -> int:
        return int(await self.pool.fetchval(COUNT))

    def read_batches(self) -> tuple[int, int]:
        reads = self._reads
        return (0, 0) if reads is None else (reads.batches, reads.batched_keys)

    @staticmethod
    def _notify(announce: str) -> tuple[str, str]:
        return (INVALIDATION_CHANNEL, announce) if announce else ("", "")
