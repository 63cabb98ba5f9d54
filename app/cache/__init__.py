"""The cache: ``from app.cache import cache`` (the open services' ``Cache``).

    user = await cache.get(f"user:{user_id}")                       # None on a miss
    await cache.set(f"user:{user_id}", {"name": "Ada"}, ttl=60)
    stats = await cache.get_or_set(f"stats:{user_id}", load_stats, ttl=300)
    await cache.delete(f"user:{user_id}")
    await cache.delete_prefix(f"tasks:list:{user_id}:")
    hits = await cache.incr(f"hits:{day}", ttl=86_400)

Values are anything orjson serialises (dicts, lists, str, numbers, bools, None; datetimes
and UUIDs come back as strings): they are stored as JSON bytes and returned decoded.

Tiers, in the order a read tries them:

1. **L1**, in this process (CACHE_L1_MAX_ENTRIES, 0 = off): an LRU of decoded values, each
   kept at most CACHE_L1_TTL_SECONDS and never past its backend expiry. Every write
   announces the key to every other process (NOTIFY on Postgres, PUBLISH on Redis, in the
   same round trip as the write), which evicts it from their L1 — measured delay in
   docs/benchmarks.md. The announcements arrive through the process's notifier (Postgres
   or Redis, as the backend). A process serves from L1 only while that notifier is
   connected; when it drops, L1 is bypassed and emptied, so a lost message can never leave
   a stale value behind for longer than it takes to notice.
2. **The backend**, shared by all processes, chosen by CACHE_BACKEND: ``postgres`` (an
   UNLOGGED table, app/cache/postgres.py) or ``redis`` (app/cache/redis.py).

``get_or_set`` runs one loader per key at a time across every process: callers in one
process share one in-flight load, and processes race for a lock row (Postgres) or a
``SET NX`` key (Redis) with a lease of CACHE_LOCK_TTL_SECONDS. The others poll for the
value for up to CACHE_LOCK_WAIT_SECONDS, then load it themselves. With
CACHE_EARLY_REFRESH_RATIO > 0, a hit in the last part of a key's TTL starts one
background reload, so hot keys are refreshed before they expire instead of after.

Failure is a miss: if the backend errors or takes longer than CACHE_TIMEOUT_SECONDS, reads
return the default, writes are skipped and ``incr`` returns None — counted in
``cache_errors_total`` and logged (at most once per 10 s) — and the request goes on.

Reads are counted per key prefix (the part before the first ``:``) as L1 hits, hits and
misses, and per key per minute; the busiest keys of the last full minute feed the
hot-key signal (SIGNAL_HOT_KEY_READS_PER_MINUTE).

Limits: keys are 1–250 characters without whitespace or control characters; values over
CACHE_MAX_VALUE_BYTES are not stored (logged, counted); the Postgres table keeps at most
CACHE_MAX_ENTRIES rows (oldest written evicted first by the purge job).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import asyncpg
import orjson
from redis.exceptions import RedisError

from app.cache.local import MISSING, LocalCache
from app.config import Settings
from app.current import Current
from app.db import Database
from app.notifier import Notifier, Unlisten

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Cache", "CacheBackend", "CacheClosedError", "cache", "create_backend", "current_cache"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Loader = Callable[[], Awaitable[T]]

KEY_PATTERN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,250}$")
# Over this many keys in one write, other processes are told to empty their L1 instead
# (NOTIFY carries at most 8,000 bytes).
ANNOUNCE_MAX_BYTES = 7_000
TRACKED_KEYS_PER_MINUTE = 10_000
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


class Cache:
    """One per open services; ``start()`` starts the backend and listens for invalidations."""

    def __init__(self, settings: Settings, backend: CacheBackend, notifier: Notifier) -> None:
        self.settings = settings
        self.backend: CacheBackend | None = None
        self._backend = backend
        self._notifier = notifier
        self._unlisten: Unlisten | None = None
        self._forget_state: Callable[[], None] | None = None
        # New for every Cache: two processes (or two instances in one) must not share an
        # id, or each would ignore the other's invalidations as its own.
        self.instance = secrets.token_hex(4)
        self._default_ttl = settings.cache_default_ttl_seconds
        self._timeout = settings.cache_timeout_seconds
        self._max_value_bytes = settings.cache_max_value_bytes
        self._l1_ttl = settings.cache_l1_ttl_seconds
        self._l1 = LocalCache(settings.cache_l1_max_entries)
        self._l1_enabled = settings.cache_l1_max_entries > 0
        self._listening = False
        # Bumped by every local write and every invalidation heard: a backend read that
        # saw a bump while in flight does not fill L1 (its value may predate the write).
        self._generation = 0
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Accounting, exported by CacheCollector at scrape time (cheaper than metric calls
        # on a path that takes a microsecond).
        self.reads: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.invalidations_received = 0
        self.skipped_large = 0
        self._minute_started = time.monotonic()
        self._key_reads: dict[str, int] = {}
        self.hot_keys_last_minute: list[tuple[str, int]] = []
        self._last_error_log = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend; listen for other processes' invalidations (with L1 on)."""
        await self._backend.start()
        self.backend = self._backend
        self._closed = False
        if self._l1_enabled:
            self._forget_state = self._notifier.on_state(self._on_listener)
            self._unlisten = await self._notifier.listen(
                self._backend.invalidation_topic, self._on_invalidation_message
            )
            self._on_listener(self._notifier.connected)

    async def stop(self) -> None:
        self._closed = True
        for task in [*self._inflight.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*self._inflight.values(), *self._background, return_exceptions=True)
        self._inflight.clear()
        self._background.clear()
        if self._forget_state is not None:
            self._forget_state()
            self._forget_state = None
        if self._unlisten is not None:
            unlisten, self._unlisten = self._unlisten, None
            await unlisten()
        self._listening = False
        self._l1.clear()
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await backend.close()

    async def _ready(self) -> CacheBackend:
        """The backend; after ``stop()`` calls fail with CacheClosedError (read as a miss)."""
        if self.backend is None:
            raise CacheClosedError("the cache is not running")
        return self.backend

    @property
    def l1_entries(self) -> int:
        return len(self._l1)

    def health(self) -> tuple[str, bool]:
        if not self._l1_enabled:
            return "l1 off", True
        return ("listening" if self._listening else "l1 bypassed: listener down"), True

    # --- reads ---------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` on a miss (or when the backend fails)."""
        now = self._count_read(key)
        if self._listening:
            value = self._l1.get(key, now)
            if value is not MISSING:
                self._tally(key, "l1_hit")
                return value
        found = await self._fetch(key, with_ttl=False)
        if found is MISSING:
            self._tally(key, "miss")
            return default
        self._tally(key, "hit")
        return found[0]

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The keys that are present, with their values (one backend round trip)."""
        found: dict[str, Any] = {}
        wanted: list[str] = []
        for key in keys:
            now = self._count_read(key)
            value = self._l1.get(key, now) if self._listening else MISSING
            if value is MISSING:
                wanted.append(key)
            else:
                self._tally(key, "l1_hit")
                found[key] = value
        if wanted:
            raw = await self._call("get", lambda backend: backend.get_many(wanted), {})
            for key in wanted:
                if key in raw:
                    self._tally(key, "hit")
                    found[key] = orjson.loads(raw[key])
                else:
                    self._tally(key, "miss")
        return found

    async def _fetch(self, key: str, *, with_ttl: bool = True) -> Any:
        """(value, remaining ttl) from the backend, filling L1; MISSING when absent."""
        generation = self._generation
        if not self._listening and not with_ttl:
            raw = await self._call("get", lambda backend: backend.get(key), None)
            return MISSING if raw is None else (orjson.loads(raw), None)
        row = await self._call("get", lambda backend: backend.get_with_ttl(key), None)
        if row is None:
            return MISSING
        value = orjson.loads(row[0])
        if self._listening and generation == self._generation:
            lifetime = self._l1_ttl if row[1] is None else min(self._l1_ttl, row[1])
            self._l1.put(key, value, time.monotonic() + lifetime)
        return value, row[1]

    # --- writes --------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (CACHE_DEFAULT_TTL_SECONDS when None).

        Returns False when the value was not stored (too large, or the backend failed).
        """
        check_key(key)
        raw = self._encode(key, value)
        self._written([key])
        if raw is None:
            return False
        ttl = self._ttl(ttl)
        stored = await self._call(
            "set", lambda backend: backend.set(key, raw, ttl, self._announce([key])), False
        )
        if stored is not False and self._listening:
            self._l1.put(key, value, time.monotonic() + min(self._l1_ttl, ttl))
        return stored is not False

    async def set_many(self, values: dict[str, Any], ttl: float | None = None) -> bool:
        """Store several keys in one backend round trip."""
        encoded: dict[str, bytes] = {}
        for key, value in values.items():
            check_key(key)
            raw = self._encode(key, value)
            if raw is not None:
                encoded[key] = raw
        self._written(list(values))
        if not encoded:
            return False
        announce = self._announce(list(encoded))
        result = await self._call(
            "set", lambda backend: backend.set_many(encoded, self._ttl(ttl), announce), False
        )
        return result is not False

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent; True when this call stored it."""
        check_key(key)
        raw = self._encode(key, value)
        if raw is None:
            return False
        return bool(
            await self._call("set", lambda backend: backend.add(key, raw, self._ttl(ttl)), False)
        )

    async def delete(self, *keys: str) -> int:
        """Remove keys here and in every process's L1; returns how many existed."""
        for key in keys:
            check_key(key)
        self._written(list(keys))
        if not keys:
            return 0
        deleted = await self._call(
            "delete", lambda backend: backend.delete(list(keys), self._announce(list(keys))), 0
        )
        return int(deleted)

    async def delete_prefix(self, prefix: str, *, again_after: float | None = None) -> int:
        """Remove every key starting with ``prefix`` (at least one character).

        ``again_after``: delete once more that many seconds later, in the background — for
        invalidations racing a reader that read the database just before the change and
        stores its stale answer just after the first delete.
        """
        check_key(prefix)
        if again_after is not None:
            self._spawn(self._delete_later(prefix, again_after), f"cache-delete-again:{prefix}")
        self._generation += 1
        self._l1.evict_prefix(prefix)
        announce = f"{self.instance} p {prefix}" if self._l1_enabled else ""
        return int(
            await self._call("delete", lambda backend: backend.delete_prefix(prefix, announce), 0)
        )

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int | None:
        """Add ``amount`` to the integer at ``key`` (from 0; ``ttl`` set on creation).

        Returns the new value, or None when the backend is unavailable. ValueError when
        the stored value is not an integer.
        """
        check_key(key)
        self._written([key])
        result: int | None = await self._call(
            "incr",
            lambda backend: backend.incr(key, amount, self._ttl(ttl), self._announce([key])),
            None,
        )
        return result

    # --- get_or_set ----------------------------------------------------------------------

    async def get_or_set(self, key: str, loader: Loader[T], ttl: float | None = None) -> T:
        """The cached value, or ``await loader()`` stored for ``ttl`` — one loader per key
        at a time across all processes (see the module docstring)."""
        check_key(key)
        ttl = self._ttl(ttl)
        now = self._count_read(key)
        if self._listening:
            value = self._l1.get(key, now)
            if value is not MISSING:
                self._tally(key, "l1_hit")
                return value  # type: ignore[no-any-return]
        found = await self._fetch(key)
        if found is not MISSING:
            self._tally(key, "hit")
            value, remaining = found
            self._maybe_refresh_early(key, loader, ttl, remaining)
            return value  # type: ignore[no-any-return]
        self._tally(key, "miss")
        load = self._inflight.get(key)
        if load is None:
            load = asyncio.create_task(self._load_once(key, loader, ttl), name=f"cache-load:{key}")
            self._inflight[key] = load
            load.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: a caller that goes away (client disconnect) does not cancel the load
        # the other callers are waiting for.
        return await asyncio.shield(load)

    async def _load_once(self, key: str, loader: Loader[T], ttl: float) -> T:
        settings = self._settings()
        token = secrets.token_hex(8)
        lock_ttl = settings.cache_lock_ttl_seconds
        # A backend that cannot answer cannot coordinate either: just load.
        if await self._call("lock", lambda backend: backend.try_lock(key, token, lock_ttl), True):
            return await self._load_locked(key, loader, ttl, token)
        deadline = time.monotonic() + settings.cache_lock_wait_seconds
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            raw = await self._call("get", lambda backend: backend.get(key), None)
            if raw is not None:
                return orjson.loads(raw)  # type: ignore[no-any-return]
            # No value and the lock is free again: the loader failed; take over.
            if await self._call(
                "lock", lambda backend: backend.try_lock(key, token, lock_ttl), False
            ):
                return await self._load_locked(key, loader, ttl, token)
        waited = settings.cache_lock_wait_seconds
        log.warning("cache: waited %.1fs for %r to be loaded elsewhere; loading", waited, key)
        value = await loader()
        await self.set(key, value, ttl)
        return value

    async def _load_locked(self, key: str, loader: Loader[T], ttl: float, token: str) -> T:
        try:
            value = await loader()
            await self.set(key, value, ttl)
            return value
        finally:
            await self._call("lock", lambda backend: backend.unlock(key, token), None)

    def _maybe_refresh_early(
        self, key: str, loader: Loader[Any], ttl: float, remaining: float | None
    ) -> None:
        ratio = self._settings().cache_early_refresh_ratio
        if ratio <= 0 or remaining is None or remaining > ttl * ratio:
            return
        if key in self._refreshing or key in self._inflight:
            return
        self._refreshing.add(key)
        self._spawn(self._refresh(key, loader, ttl), f"cache-refresh:{key}")

    async def _refresh(self, key: str, loader: Loader[Any], ttl: float) -> None:
        token = secrets.token_hex(8)
        try:
            lock_ttl = self._settings().cache_lock_ttl_seconds
            if await self._call(
                "lock", lambda backend: backend.try_lock(key, token, lock_ttl), False
            ):
                await self._load_locked(key, loader, ttl, token)
        except Exception:
            log.exception("cache: early refresh of %r failed", key)
        finally:
            self._refreshing.discard(key)

    async def _delete_later(self, prefix: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.delete_prefix(prefix)

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- housekeeping (run by the pgfirst.purge_cache job) ------------------------------

    async def purge(self) -> tuple[int, int]:
        """Delete expired entries, then evict the oldest past CACHE_MAX_ENTRIES."""
        settings = self._settings()
        backend = await self._ready()
        batch = settings.cache_purge_batch
        expired = await backend.purge_expired(batch)
        evicted = await backend.enforce_cap(settings.cache_max_entries, batch)
        return expired, evicted

    async def count(self) -> int:
        return await (await self._ready()).count()

    # --- invalidation --------------------------------------------------------------------

    def _announce(self, keys: list[str]) -> str:
        if not self._l1_enabled:
            return ""
        message = f"{self.instance} k {' '.join(keys)}"
        if len(message.encode()) > ANNOUNCE_MAX_BYTES:
            return f"{self.instance} *"
        return message

    def _written(self, keys: list[str]) -> None:
        self._generation += 1
        for key in keys:
            self._l1.evict(key)

    def _on_invalidation_message(self, topic: str, message: str) -> None:
        self._on_invalidation(message)

    def _on_invalidation(self, message: str) -> None:
        instance, _, rest = message.partition(" ")
        if instance == self.instance:
            return
        self.invalidations_received += 1
        self._generation += 1
        kind, _, argument = rest.partition(" ")
        if kind == "k":
            for key in argument.split(" "):
                self._l1.evict(key)
        elif kind == "p":
            self._l1.evict_prefix(argument)
        else:
            self._l1.clear()

    def _on_listener(self, connected: bool) -> None:
        # Whatever was announced while disconnected is unknown: start L1 empty.
        self._generation += 1
        self._l1.clear()
        self._listening = connected and self._l1_enabled

    # --- helpers -------------------------------------------------------------------------

    def _settings(self) -> Settings:
        return self.settings

    def _ttl(self, ttl: float | None) -> float:
        if ttl is None:
            return self._default_ttl
        if ttl <= 0:
            raise ValueError("ttl must be positive seconds")
        return ttl

    def _encode(self, key: str, value: Any) -> bytes | None:
        raw = orjson.dumps(value)
        if len(raw) > self._max_value_bytes:
            self.skipped_large += 1
            log.warning("cache: %r not stored: %d bytes > CACHE_MAX_VALUE_BYTES", key, len(raw))
            return None
        return raw

    async def _call(
        self, operation: str, use: Callable[[CacheBackend], Awaitable[Any]], fallback: Any
    ) -> Any:
        """Run a backend call under CACHE_TIMEOUT_SECONDS; failure → ``fallback``."""
        try:
            backend = await self._ready()
            async with asyncio.timeout(self._timeout):
                return await use(backend)
        except CacheClosedError:
            return fallback
        except BACKEND_ERRORS as exc:
            self.errors[operation] = self.errors.get(operation, 0) + 1
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.warning("cache %s failed, treated as a miss: %r", operation, exc)
            return fallback

    def _count_read(self, key: str) -> float:
        now = time.monotonic()
        if now - self._minute_started >= 60:
            self._roll_minute(now)
        reads = self._key_reads
        count = reads.get(key)
        if count is not None:
            reads[key] = count + 1
        elif len(reads) < TRACKED_KEYS_PER_MINUTE:
            reads[key] = 1
        return now

    def _tally(self, key: str, outcome: str) -> None:
        label = (key.partition(":")[0], outcome)
        self.reads[label] = self.reads.get(label, 0) + 1

    def _roll_minute(self, now: float) -> None:
        # Reads per key over the last full minute (a gap of idle minutes reads as zero).
        recent = now - self._minute_started < 120
        self.hot_keys_last_minute = _busiest(self._key_reads) if recent else []
        self._key_reads = {}
        self._minute_started = now

    def hot_keys(self) -> list[tuple[str, int]]:
        """The most-read keys of the last full minute, with their read counts.

        Reads state without changing it: /metrics collects from a thread, while the event
        loop keeps counting (copying a dict is atomic under the GIL; iterating it is not).
        """
        age = time.monotonic() - self._minute_started
        if age < 60:
            return list(self.hot_keys_last_minute)
        return _busiest(dict(self._key_reads)) if age < 120 else []


def _busiest(reads: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(reads.items(), key=lambda item: item[1], reverse=True)[:20]


current_cache: Current[Cache] = Current("the cache")


class _CurrentCache:
    """``cache``: every attribute is the open services' Cache's (ServicesNotOpen without)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(current_cache.get(), name)


cache = cast(Cache, _CurrentCache())
