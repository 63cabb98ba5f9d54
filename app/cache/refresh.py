"""Refresh-ahead for L1: the keys read near the end of their L1 lifetime, read again in
the background before they expire (the rule is in invalidation.py).

Without it every L1 entry of a key read all the time ends in a miss, and that read waits
for a backend round trip; with many users those refills pile up on the backend's few
connections, and the ones at the back of the queue were most of the slowest 1 % of
requests (docs/cache.md). Here the due keys go to the backend in one ``get_many_with_ttl``
round trip, one at a time per process, as many keys as have come due meanwhile (up to
REFRESH_BATCH): readers keep the entry they have and never wait on it. A ``get_or_set`` key
comes with its loader: when the backend's copy is gone the loader runs in the background,
and when it is about to expire the stampede guard's early refresh takes over. A failed or
timed-out refresh fills nothing; its entries expire as they would have.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from app.cache.calls import BackendCalls
from app.cache.invalidation import L1Tier
from app.cache.stampede import Loader, StampedeGuard

log = logging.getLogger(__name__)

REFRESH_BATCH = 100  # keys per round trip (one ``key = ANY($1)`` read on Postgres); their
# decoding is one uninterrupted stretch of the event loop, so the batch stays small


class L1Refresher:
    """Reads the due keys again, batched; ``ahead`` adds a ``get_or_set`` key's loader,
    run in the background when the backend's copy is gone or about to expire."""

    def __init__(
        self,
        l1: L1Tier,
        calls: BackendCalls,
        spawn: Callable[[Awaitable[Any], str], None],
        stampede: StampedeGuard,
    ) -> None:
        self._l1 = l1
        self._calls = calls
        self._spawn = spawn
        self._stampede = stampede
        self._loaders: dict[str, tuple[Loader[Any], float, bool]] = {}
        self._running = False
        self.refreshed = 0  # keys filled again, for tests and curiosity

    def poke(self) -> None:
        """Start refreshing the due keys unless a refresh already runs (it takes them)."""
        if not self._running:
            self._running = True
            self._spawn(self._run(), "cache-l1-refresh")

    def ahead(self, key: str, loader: Loader[Any], ttl: float, across_processes: bool) -> None:
        """Refresh due ``key`` with its loader at hand."""
        self._loaders[key] = (loader, ttl, across_processes)
        self.poke()

    async def _run(self) -> None:
        l1, stampede = self._l1, self._stampede
        try:
            while keys := l1.entries.take_due(REFRESH_BATCH):
                loaders = [self._loaders.pop(key, None) for key in keys]
                generation = l1.generation
                rows: dict[str, tuple[bytes, float | None]] = await self._calls.run(
                    "get", lambda backend: backend.get_many_with_ttl(keys), {}
                )
                shortest = l1.shortest_lifetime
                for key, with_loader in zip(keys, loaders, strict=True):
                    row = rows.get(key)
                    if row is None:
                        if with_loader is not None and not self._calls.failing:
                            self._spawn(self._load(key, *with_loader), f"cache-ahead:{key}")
                        continue
                    raw, remaining = row
                    if with_loader is not None:
                        loader, ttl, across = with_loader
                        stampede.refresh_early(key, loader, ttl, remaining, across_processes=across)
                    elif remaining is not None and remaining < shortest:
                        # A copy about to expire would only come due again sooner, and
                        # again: let the entry expire instead.
                        continue
                    l1.fill(key, orjson.loads(raw), remaining, generation)
                    self.refreshed += 1
        finally:
            self._running = False
            if not l1.entries.due:  # loaders of keys dropped from L1 meanwhile
                self._loaders.clear()

    async def _load(
        self, key: str, loader: Loader[Any], ttl: float, across_processes: bool
    ) -> None:
        try:
            await self._stampede.load(key, loader, ttl, across_processes=across_processes)
        except Exception:  # the loader's: its readers load in the foreground once it expires
            log.warning("cache: loading %r ahead failed", key, exc_info=True)
