"""Keys, and what both cache backends implement (the choice between them: CACHE_BACKEND).

A backend stores bytes under keys and knows nothing of L1, JSON or accounting; each write
takes the L1 announcement to send with it (``""``: none), so a backend can deliver the
write and its announcement in one round trip.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

import asyncpg
from redis.exceptions import RedisError

from app.config import Settings
from app.db import Database

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEY_PATTERN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,250}$")
# What a backend raises when it cannot answer; the cache serves these as misses.
# InternalClientError: asyncpg's word for a connection the server ended while it was idle.
BACKEND_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    RedisError,
)


class CacheClosedError(RuntimeError):
    """The cache was stopped; calls made afterwards are misses."""


class CacheBackend(Protocol):
    """Bytes in, bytes out; what both backends implement (see postgres.py, redis.py)."""

    name: str
    invalidation_topic: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def get_with_ttl(self, key: str) -> tuple[bytes, float | None] | None: ...
    async def get_many(self, keys: list[str]) -> dict[str, bytes]: ...
    async def get_many_with_ttl(self, keys: list[str]) -> dict[str, tuple[bytes, float | None]]: ...
    async def set(self, key: str, value: bytes, ttl: float | None, announce: str) -> None: ...
    async def set_many(self, items: dict[str, bytes], ttl: float | None, announce: str) -> None: ...
    async def add(self, key: str, value: bytes, ttl: float | None) -> bool: ...
    async def delete(self, keys: list[str], announce: str) -> int: ...
    async def delete_prefix(self, prefix: str, announce: str) -> int: ...
    async def incr(self, key: str, amount: int, ttl: float | None, announce: str) -> int: ...
    async def try_lock(self, key: str, token: str, ttl: float) -> bool: ...
    async def unlock(self, key: str, token: str) -> None: ...
    async def purge_expired(self, batch: int) -> int: ...
    async def enforce_cap(self, max_entries: int, batch: int) -> int: ...
    async def count(self) -> int: ...
    def read_batches(self) -> tuple[int, int]:
        """Statements that served batched single-key reads, and the keys they carried."""
        ...


def create_backend(settings: Settings, db: Database, redis: Redis | None) -> CacheBackend:
    """The backend CACHE_BACKEND names (``redis`` needs the services' Redis client)."""
    if settings.cache_backend == "redis":
        from app.cache.redis import RedisCacheBackend

        if redis is None:
            raise ValueError("CACHE_BACKEND=redis needs a Redis client (REDIS_URL)")
        return RedisCacheBackend(redis)
    from app.cache.postgres import PostgresCacheBackend

    return PostgresCacheBackend(settings, db)


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid cache key {key[:80]!r}: 1-250 characters, no whitespace")
    return key


def key_prefix(key: str) -> str:
    return key.partition(":")[0]
