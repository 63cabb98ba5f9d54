"""The Redis cache backend (CACHE_BACKEND=redis): the same operations on Redis keys.

Keys live under ``pgfirst:cache:``, stampede locks under ``pgfirst:cache-lock:``. Writes
and their L1 invalidation travel in one pipelined round trip (SET ... then PUBLISH on
``pgfirst:cache-invalidate``); each process hears them through its Redis notifier. The
Redis client is the services' one, shared with the other Redis backends.

Differences from the Postgres backend, by design of Redis: expiry and the size cap are
Redis's own (TTL, and ``maxmemory`` + ``maxmemory-policy allkeys-lru`` on the server —
configure it there), so ``purge_expired`` and ``enforce_cap`` do nothing; ``delete_prefix``
walks the keyspace with SCAN (cost grows with the number of keys, not the matches).
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

NAMESPACE = "pgfirst:cache:"
LOCK_NAMESPACE = "pgfirst:cache-lock:"
INVALIDATION_CHANNEL = "pgfirst:cache-invalidate"
SCAN_BATCH = 1_000

# Delete the lock only if it is still ours (it may have expired and been taken since).
UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _px(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, int(ttl * 1000))


class RedisCacheBackend:
    name = "redis"
    invalidation_topic = INVALIDATION_CHANNEL

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._unlock = self.redis.register_script(UNLOCK_SCRIPT)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the client belongs to the services

    # --- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self.redis.get(NAMESPACE + key)
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def get_with_ttl(self, key: str) -> tuple[bytes, float | None] | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(NAMESPACE + key)
            pipe.pttl(NAMESPACE + key)
            value, pttl = await pipe.execute()
        if value is None:
            return None
        return value, (None if pttl < 0 else pttl / 1000)

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        values = await self.redis.mget([NAMESPACE + key for key in keys])
        return {
            key: value if isinstance(value, bytes) else value.encode()
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def get_many_with_ttl(self, keys: list[str]) -> dict[str, tuple[bytes, float | None]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(NAMESPACE + key)
                pipe.pttl(NAMESPACE + key)
            replies = await pipe.execute()
        found: dict[str, tuple[bytes, float | None]] = {}
        for key, value, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if value is not None:
                raw = value if isinstance(value, bytes) else value.encode()
                found[key] = raw, (None if pttl < 0 else pttl / 1000)
        return found

    # --- writes --------------------------------------------------------------------------

    async def set(self, key: str, value: bytes, ttl: float | None, announce: str) -> None:
        if not announce:
            await self.redis.set(NAMESPACE + key, value, px=_px(ttl))
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(NAMESPACE + key, value, px=_px(ttl))
            pipe.publish(INVALIDATION_CHANNEL, announce)
            await pipe.execute()

    async def set_many(self, items: dict[str, bytes], ttl: float | None, announce: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(NAMESPACE + key, value, px=_px(ttl))
            if announce:
                pipe.publish(INVALIDATION_CHANNEL, announce)
            await pipe.execute()

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(await self.redis.set(NAMESPACE + key, value, px=_px(ttl), nx=True))

    async def delete(self, keys: list[str], announce: str) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.unlink(*(NAMESPACE + key for key in keys))
            if announce:
                pipe.publish(INVALIDATION_CHANNEL, announce)
            results = await pipe.execute()
        return int(results[0])

    async def delete_prefix(self, prefix: str, announce: str) -> int:
        """UNLINK every key starting with ``prefix``, found by SCAN MATCH.

        Cost: SCAN walks the whole keyspace of the Redis database — every cache key and
        every other key stored there (rate limits, pub/sub streams) — whatever the number
        of matches, SCAN_BATCH keys per round trip; the matches go in UNLINKs of up to
        SCAN_BATCH keys. A key written under the prefix while the scan runs may survive.
        """
        deleted = 0
        batch: list[bytes] = []
        async for name in self.redis.scan_iter(
            match=NAMESPACE + _glob_escape(prefix) + "*", count=SCAN_BATCH
        ):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                deleted += await self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.redis.unlink(*batch)
        if announce:
            await self.redis.publish(INVALIDATION_CHANNEL, announce)
        return deleted

    async def incr(self, key: str, amount: int, ttl: float | None, announce: str) -> int:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(NAMESPACE + key, amount)
                if ttl is not None:
                    # NX: the expiry is set when the counter is created, not pushed back.
                    pipe.pexpire(NAMESPACE + key, _px(ttl) or 1, nx=True)
                if announce:
                    pipe.publish(INVALIDATION_CHANNEL, announce)
                results = await pipe.execute()
        except ResponseError as exc:
            if "not an integer" in str(exc):
                raise ValueError(f"cache value at {key!r} is not an integer") from None
            raise
        return int(results[0])

    # --- stampede locks ------------------------------------------------------------------

    async def try_lock(self, key: str, token: str, ttl: float) -> bool:
        return bool(await self.redis.set(LOCK_NAMESPACE + key, token, px=_px(ttl), nx=True))

    async def unlock(self, key: str, token: str) -> None:
        await self._unlock(keys=[LOCK_NAMESPACE + key], args=[token])

    # --- housekeeping: Redis expires and evicts by itself ----------------------------------

    async def purge_expired(self, batch: int) -> int:
        return 0

    async def enforce_cap(self, max_entries: int, batch: int) -> int:
        return 0

    async def count(self) -> int:
        total = 0
        async for _ in self.redis.scan_iter(match=NAMESPACE + "*", count=SCAN_BATCH):
            total += 1
        return total

    def read_batches(self) -> tuple[int, int]:
        return (0, 0)  # reads are not batched on Redis: redis-py queues them on its pool
