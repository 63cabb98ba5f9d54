"""``Cache``: what callers use — JSON values over L1 and a backend, failures as misses.

It composes the parts, each in its own module: ``L1Tier`` (invalidation.py) for the
in-process tier and the announcements that keep it in step, ``L1Refresher`` (refresh.py)
for reading its busy keys again before they expire, ``BackendCalls`` (calls.py)
for the timeout and error policy every backend call runs under, ``StampedeGuard``
(stampede.py) for get_or_set's loads, ``ReadAccounting`` (accounting.py) for hit rates and
hot keys. Time is read from ``clock`` (time.monotonic unless a test passes its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import orjson

from app.cache.accounting import ReadAccounting
from app.cache.backend import CacheBackend, check_key
from app.cache.calls import BackendCalls
from app.cache.invalidation import L1Tier
from app.cache.local import FAILED, MISSING, Clock
from app.cache.refresh import L1Refresher
from app.cache.stampede import Loader, StampedeGuard
from app.config import Settings
from app.notifier import Notifier

log = logging.getLogger(__name__)

T = TypeVar("T")


class Cache:
    """One per open services; ``start()`` starts the backend and listens for invalidations."""

    def __init__(
        self,
        settings: Settings,
        backend: CacheBackend,
        notifier: Notifier,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._clock = clock
        self._default_ttl = settings.cache_default_ttl_seconds
        self._max_value_bytes = settings.cache_max_value_bytes
        self._l1 = L1Tier(settings, notifier, clock)
        self._calls = BackendCalls(settings.cache_timeout_seconds, clock)
        self._call = self._calls.run
        self._accounting = ReadAccounting(clock)
        self._background: set[asyncio.Task[Any]] = set()
        self._stampede = StampedeGuard(settings, self._calls, self.set, self._spawn, clock)
        self._refresher = L1Refresher(self._l1, self._calls, self._spawn, self._stampede)
        self.skipped_large = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend; listen for other processes' invalidations (with L1 on)."""
        await self._backend.start()
        self._calls.backend = self._backend
        await self._l1.start(self._backend.invalidation_topic)

    async def stop(self) -> None:
        await self._stampede.stop()
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._background.clear()
        await self._l1.stop()
        if self._calls.backend is not None:
            backend, self._calls.backend = self._calls.backend, None
            await backend.close()

    @property
    def backend(self) -> CacheBackend | None:
        """The backend while the cache runs (None before ``start`` and after ``stop``)."""
        return self._calls.backend

    def health(self) -> tuple[str, bool]:
        return self._l1.health()

    # --- what /metrics and the signals read ----------------------------------------------

    @property
    def reads(self) -> dict[tuple[str, str], int]:
        return self._accounting.reads

    def hot_keys(self) -> list[tuple[str, int]]:
        return self._accounting.hot_keys()

    @property
    def errors(self) -> dict[str, int]:
        return self._calls.errors

    @property
    def failing(self) -> bool:
        """Whether the latest backend call failed (timed out, or the backend is down)."""
        return self._calls.failing

    @property
    def l1_entries(self) -> int:
        return len(self._l1.entries)

    @property
    def l1_refreshed(self) -> int:
        """L1 entries read again before they expired (refresh.py)."""
        return self._refresher.refreshed

    @property
    def invalidations_received(self) -> int:
        return self._l1.invalidations_received

    @property
    def instance(self) -> str:
        return self._l1.instance

    @property
    def awaiting_loads(self) -> frozenset[str]:
        """Keys this process's get_or_set is waiting for another process to load."""
        return frozenset(self._stampede.waiting)

    # --- reads ---------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` on a miss (or when the backend fails)."""
        accounting = self._accounting
        now = accounting.count_read(key)
        l1 = self._l1
        if l1.serving:
            value = l1.entries.get(key, now)
            if value is not MISSING:
                accounting.tally(key, "l1_hit")
                if l1.entries.due:
                    self._refresher.poke()
                return value
        found = await self._fetch(key, with_ttl=False)
        if found is MISSING or found is FAILED:
            accounting.tally(key, "miss")
            return default
        accounting.tally(key, "hit")
        return found[0]

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The keys that are present, with their values (one backend round trip for those
        not in L1, which then keeps them as ``get`` would)."""
        accounting = self._accounting
        found: dict[str, Any] = {}
        wanted: list[str] = []
        for key in keys:
            value = self._l1.lookup(key, accounting.count_read(key))
            if value is MISSING:
                wanted.append(key)
            else:
                accounting.tally(key, "l1_hit")
                found[key] = value
        if self._l1.entries.due:
            self._refresher.poke()
        if not wanted:
            return found
        l1 = self._l1
        if not l1.serving:
            raw = await self._call("get", lambda backend: backend.get_many(wanted), {})
            for key in wanted:
                if key in raw:
                    accounting.tally(key, "hit")
                    found[key] = orjson.loads(raw[key])
                else:
                    accounting.tally(key, "miss")
            return found
        generation = l1.generation
        rows = await self._call("get", lambda backend: backend.get_many_with_ttl(wanted), {})
        for key in wanted:
            row = rows.get(key)
            if row is None:
                accounting.tally(key, "miss")
                continue
            accounting.tally(key, "hit")
            value = found[key] = orjson.loads(row[0])
            l1.fill(key, value, row[1], generation)
        return found

    async def _fetch(self, key: str, *, with_ttl: bool = True) -> Any:
        """(value, remaining ttl) from the backend, filling L1; MISSING when absent,
        FAILED when the backend did not answer."""
        l1 = self._l1
        generation = l1.generation
        if not l1.serving and not with_ttl:
            raw = await self._call("get", lambda backend: backend.get(key), FAILED)
            if raw is FAILED:
                return FAILED
            return MISSING if raw is None else (orjson.loads(raw), None)
        row = await self._call("get", lambda backend: backend.get_with_ttl(key), FAILED)
        if row is None or row is FAILED:
            return MISSING if row is None else FAILED
        value = orjson.loads(row[0])
        l1.fill(key, value, row[1], generation)
        return value, row[1]

    # --- writes --------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (CACHE_DEFAULT_TTL_SECONDS when None).

        Returns False when the value was not stored (too large, or the backend failed).
        """
        check_key(key)
        raw = self._encode(key, value)
        self._l1.written([key])
        if raw is None:
            return False
        ttl = self._ttl(ttl)
        announce = self._l1.announce([key])
        stored = await self._call(
            "set", lambda backend: backend.set(key, raw, ttl, announce), False
        )
        if stored is False:
            return False
        self._l1.keep_written(key, value, ttl)
        return True

    async def set_many(self, values: dict[str, Any], ttl: float | None = None) -> bool:
        """Store several keys in one backend round trip."""
        encoded: dict[str, bytes] = {}
        for key, value in values.items():
            check_key(key)
            raw = self._encode(key, value)
            if raw is not None:
                encoded[key] = raw
        self._l1.written(list(values))
        if not encoded:
            return False
        announce = self._l1.announce(list(encoded))
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
        self._l1.written(list(keys))
        if not keys:
            return 0
        announce = self._l1.announce(list(keys))
        deleted = await self._call(
            "delete", lambda backend: backend.delete(list(keys), announce), 0
        )
        return int(deleted)

    async def delete_prefix(self, prefix: str, *, again_after: float | None = None) -> int:
        """Remove every key starting with ``prefix`` (at least one character).

        Cost: on Postgres one index range scan over the matching keys; on Redis a SCAN of
        the whole keyspace (all keys, not only the matches) plus UNLINKs in batches — keep
        it off request paths there. ``again_after``: delete once more that many seconds
        later, in the background — for invalidations racing a reader that read the
        database just before the change and stores its stale answer just after the first
        delete.
        """
        check_key(prefix)
        if again_after is not None:
            self._spawn(self._delete_later(prefix, again_after), f"cache-delete-again:{prefix}")
        self._l1.written_prefix(prefix)
        announce = self._l1.announce_prefix(prefix)
        return int(
            await self._call("delete", lambda backend: backend.delete_prefix(prefix, announce), 0)
        )

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int | None:
        """Add ``amount`` to the integer at ``key`` (from 0; ``ttl`` set on creation).

        Returns the new value, or None when the backend is unavailable. ValueError when
        the stored value is not an integer.
        """
        check_key(key)
        self._l1.written([key])
        announce = self._l1.announce([key])
        result: int | None = await self._call(
            "incr", lambda backend: backend.incr(key, amount, self._ttl(ttl), announce), None
        )
        return result

    # --- get_or_set ----------------------------------------------------------------------

    async def get_or_set(
        self,
        key: str,
        loader: Loader[T],
        ttl: float | None = None,
        *,
        across_processes: bool = True,
    ) -> T:
        """The cached value, or ``await loader()`` stored for ``ttl`` — one loader per key
        at a time in this process, and across all of them unless ``across_processes`` is
        False (stampede.py)."""
        check_key(key)
        ttl = self._ttl(ttl)
        accounting = self._accounting
        now = accounting.count_read(key)
        l1 = self._l1
        if l1.serving:
            value = l1.entries.get(key, now)
            if value is not MISSING:
                accounting.tally(key, "l1_hit")
                due = l1.entries.due
                if due and due[-1] == key:  # this read asked for a refresh: with the loader
                    self._refresher.ahead(key, loader, ttl, across_processes)
                elif due:
                    self._refresher.poke()
                return value  # type: ignore[no-any-return]
        found = await self._fetch(key)
        if found is FAILED:
            # A backend that did not answer this read would only time out again on the
            # lock, the store and the unlock: load without them.
            accounting.tally(key, "miss")
            return await loader()
        if found is not MISSING:
            accounting.tally(key, "hit")
            value, remaining = found
            self._stampede.refresh_early(
                key, loader, ttl, remaining, across_processes=across_processes
            )
            return value  # type: ignore[no-any-return]
        accounting.tally(key, "miss")
        return await self._stampede.load(key, loader, ttl, across_processes=across_processes)

    # --- housekeeping (run by the pgfirst.purge_cache job) ------------------------------

    async def purge(self) -> tuple[int, int]:
        """Delete expired entries, then evict the oldest past CACHE_MAX_ENTRIES."""
        settings = self.settings
        backend = self._calls.ready()
        batch = settings.cache_purge_batch
        expired = await backend.purge_expired(batch)
        evicted = await backend.enforce_cap(settings.cache_max_entries, batch)
        return expired, evicted

    async def count(self) -> int:
        return await self._calls.ready().count()

    # --- helpers -------------------------------------------------------------------------

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

    async def _delete_later(self, prefix: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.delete_prefix(prefix)

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
