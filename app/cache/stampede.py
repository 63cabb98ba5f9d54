"""get_or_set's guard against stampedes: one loader per key at a time, across processes.

1. In one process, the callers of a key share one in-flight load: a task, awaited through
   ``asyncio.shield``, so a caller that goes away (a client disconnect) does not cancel the
   load the others wait for.
2. Across processes, a load first takes the key's lock in the backend (a ``cache_locks``
   row, or ``SET NX`` on Redis) with a lease of CACHE_LOCK_TTL_SECONDS, so a loader that
   crashed frees it. The others poll the backend for the value (5 ms, doubling to 100 ms)
   for up to CACHE_LOCK_WAIT_SECONDS; if the lock comes free without a value (the loader
   raised) one of them takes it, reads once more and loads; once the wait is over each
   loads by itself.
3. With CACHE_EARLY_REFRESH_RATIO > 0, a backend hit in the last part of the TTL starts one
   background reload under the same lock and returns the current value at once: hot keys
   are reloaded before they expire, so their readers never all miss together.

A backend that cannot answer cannot coordinate either: when the lock call fails, the
caller simply loads. ``across_processes=False`` skips rule 2 for a loader cheaper than the
lock's round trips (a primary-key read): such a key is loaded by each process that misses it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from app.cache.calls import BackendCalls
from app.cache.local import Clock
from app.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
Loader = Callable[[], Awaitable[T]]
Store = Callable[[str, Any, float], Awaitable[bool]]  # (key, value, ttl) -> stored?
Spawn = Callable[[Awaitable[Any], str], None]  # (work, task name)

FIRST_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.1


class StampedeGuard:
    """Loads for get_or_set. ``store`` writes a loaded value the way ``Cache.set`` does
    (L1 and announcements included); ``spawn`` runs a background task the cache owns."""

    def __init__(
        self, settings: Settings, calls: BackendCalls, store: Store, spawn: Spawn, clock: Clock
    ) -> None:
        self._lock_ttl = settings.cache_lock_ttl_seconds
        self._lock_wait = settings.cache_lock_wait_seconds
        self._early_ratio = settings.cache_early_refresh_ratio
        self._call = calls.run
        self._store = store
        self._spawn = spawn
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._refreshing: set[str] = set()
        # Keys this process is waiting for another process to load.
        self.waiting: set[str] = set()

    async def load(
        self, key: str, loader: Loader[T], ttl: float, *, across_processes: bool = True
    ) -> T:
        """A missed key's value: joins this process's load of it, or starts one."""
        load = self._inflight.get(key)
        if load is None:
            work = (
                self._load_once(key, loader, ttl)
                if across_processes
                else self._load_unlocked(key, loader, ttl)
            )
            load = asyncio.create_task(work, name=f"cache-load:{key}")
            self._inflight[key] = load
            load.add_done_callback(lambda _: self._inflight.pop(key, None))
        value: T = await asyncio.shield(load)
        return value

    def refresh_early(
        self,
        key: str,
        loader: Loader[Any],
        ttl: float,
        remaining: float | None,
        *,
        across_processes: bool = True,
    ) -> None:
        """After a backend hit with ``remaining`` seconds left: reload in the background
        when that is within the last CACHE_EARLY_REFRESH_RATIO of ``ttl``."""
        ratio = self._early_ratio
        if ratio <= 0 or remaining is None or remaining > ttl * ratio:
            return
        if key in self._refreshing or key in self._inflight:
            return
        self._refreshing.add(key)
        self._spawn(self._refresh(key, loader, ttl, across_processes), f"cache-refresh:{key}")

    async def stop(self) -> None:
        """Cancel the loads in flight (their callers see CancelledError)."""
        loads = list(self._inflight.values())
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        self._inflight.clear()

    # --- one load per process --------------------------------------------------------------

    async def _load_once(self, key: str, loader: Loader[T], ttl: float) -> T:
        token = secrets.token_hex(8)
        if await self._call(
            "lock", lambda backend: backend.try_lock(key, token, self._lock_ttl), True
        ):
            return await self._load_locked(key, loader, ttl, token)
        self.waiting.add(key)
        try:
            return await self._wait_for_other_process(key, loader, ttl, token)
        finally:
            self.waiting.discard(key)

    async def _wait_for_other_process(
        self, key: str, loader: Loader[T], ttl: float, token: str
    ) -> T:
        deadline = self._clock() + self._lock_wait
        delay = FIRST_POLL_SECONDS
        while self._clock() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_POLL_SECONDS)
            raw = await self._call("get", lambda backend: backend.get(key), None)
            if raw is not None:
                return orjson.loads(raw)  # type: ignore[no-any-return]
            # No value and the lock is free again: the loader failed; take over.
            if await self._call(
                "lock", lambda backend: backend.try_lock(key, token, self._lock_ttl), False
            ):
                return await self._take_over(key, loader, ttl, token)
        log.warning(
            "cache: waited %.1fs for %r to be loaded elsewhere; loading", self._lock_wait, key
        )
        value = await loader()
        await self._store(key, value, ttl)
        return value

    async def _take_over(self, key: str, loader: Loader[T], ttl: float, token: str) -> T:
        # The holder may also have stored the value and let go between our read and our
        # lock: read once more, or a finished load would run a second time.
        raw = await self._call("get", lambda backend: backend.get(key), None)
        if raw is None:
            return await self._load_locked(key, loader, ttl, token)
        await self._call("lock", lambda backend: backend.unlock(key, token), None)
        return orjson.loads(raw)  # type: ignore[no-any-return]

    async def _load_locked(self, key: str, loader: Loader[T], ttl: float, token: str) -> T:
        try:
            value = await loader()
            await self._store(key, value, ttl)
            return value
        finally:
            await self._call("lock", lambda backend: backend.unlock(key, token), None)

    async def _load_unlocked(self, key: str, loader: Loader[T], ttl: float) -> T:
        value = await loader()
        await self._store(key, value, ttl)
        return value

    async def _refresh(
        self, key: str, loader: Loader[Any], ttl: float, across_processes: bool
    ) -> None:
        token = secrets.token_hex(8)
        try:
            if not across_processes:
                await self._load_unlocked(key, loader, ttl)
            elif await self._call(
                "lock", lambda backend: backend.try_lock(key, token, self._lock_ttl), False
            ):
                await self._load_locked(key, loader, ttl, token)
        except Exception:
            log.exception("cache: early refresh of %r failed", key)
        finally:
            self._refreshing.discard(key)
