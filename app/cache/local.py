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
# Seconds on a clock that never goes back (time.monotonic); tests pass one they can advance.
Clock = Callable[[], float]


class LocalCache:
    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # key -> (expires_at on the monotonic clock, value)
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        if entry[0] <= now:
            del self._entries[key]
            return MISSING
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: Any, expires_at: float) -> None:
        entries = self._entries
        entries[key] = (expires_at, value)
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def evict(self, key: str) -> None:
        self._entries.pop(key, None)

    def evict_prefix(self, prefix: str) -> None:
        for key in [key for key in self._entries if key.startswith(prefix)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
