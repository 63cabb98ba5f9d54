"""The L1 tier: a size-bounded LRU with per-entry expiry, in the process's memory.

Plain dict operations on an ``OrderedDict`` (no locks: the event loop runs one coroutine
at a time). Values are stored decoded, so a hit costs a dict lookup and no JSON parsing;
callers must treat what the cache returns as read-only, as with ``functools.lru_cache``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MISSING: Any = object()
FAILED: Any = object()  # a backend read that failed, as opposed to a key that is absent
# Seconds on a clock that never goes back (time.monotonic); tests pass one they can advance.
Clock = Callable[[], float]


class LocalCache:
    """``due`` collects the keys read for the first time in the last stretch of their
    lifetime (past ``refresh_at``): the front end fetches them again in the background
    (refresh.py) while readers keep getting the entry they have."""

    __slots__ = ("_entries", "due", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # key -> (expires_at, refresh_at, value) on the monotonic clock; refresh_at equal to
        # expires_at: not to be refreshed (or already asked for)
        self._entries: OrderedDict[str, tuple[float, float, Any]] = OrderedDict()
        self.due: list[str] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        if entry[1] <= now:
            if entry[0] <= now:
                del self._entries[key]
                return MISSING
            # Asked for once: refresh_at moves to the expiry, which the check above sees.
            self._entries[key] = (entry[0], entry[0], entry[2])
            self.due.append(key)
        self._entries.move_to_end(key)
        return entry[2]

    def put(self, key: str, value: Any, expires_at: float, refresh_at: float | None = None) -> None:
        """Keep ``value`` until ``expires_at``; due for a refresh when read from
        ``refresh_at`` on (never, when None)."""
        entries = self._entries
        due_at = expires_at if refresh_at is None else min(refresh_at, expires_at)
        entries[key] = (expires_at, due_at, value)
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def take_due(self, limit: int) -> list[str]:
        """Up to ``limit`` due keys, oldest first, no longer listed as due."""
        taken, self.due = self.due[:limit], self.due[limit:]
        return taken

    def evict(self, key: str) -> None:
        self._entries.pop(key, None)

    def evict_prefix(self, prefix: str) -> None:
        for key in [key for key in self._entries if key.startswith(prefix)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        self.due.clear()
