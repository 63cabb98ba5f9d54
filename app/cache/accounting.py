"""What the cache counts about reads, for /metrics and the hot-key signal.

- ``reads``: per (key prefix, outcome), outcome being ``l1_hit``, ``hit`` or ``miss``; the
  prefix is the key up to its first ``:``, so the label set stays small.
- Reads per key, per minute (up to TRACKED_KEYS_PER_MINUTE distinct keys a minute, so a
  scan over many keys cannot grow the map without bound); ``hot_keys()`` gives the busiest
  of the last full minute — SIGNAL_HOT_KEY_READS_PER_MINUTE compares against them.

Plain dict arithmetic, read by CacheCollector at scrape time: a metric call per read would
cost more than the L1 hit it counts.
"""

from __future__ import annotations

from app.cache.local import Clock

TRACKED_KEYS_PER_MINUTE = 10_000
HOT_KEYS_REPORTED = 20


class ReadAccounting:
    def __init__(self, clock: Clock) -> None:
        self.reads: dict[tuple[str, str], int] = {}
        self._clock = clock
        self._minute_started = clock()
        self._key_reads: dict[str, int] = {}
        self._last_minute: list[tuple[str, int]] = []

    def count_read(self, key: str) -> float:
        """Count one read of ``key`` in the current minute; returns the clock's now."""
        now = self._clock()
        if now - self._minute_started >= 60:
            self._roll_minute(now)
        reads = self._key_reads
        count = reads.get(key)
        if count is not None:
            reads[key] = count + 1
        elif len(reads) < TRACKED_KEYS_PER_MINUTE:
            reads[key] = 1
        return now

    def tally(self, key: str, outcome: str) -> None:
        label = (key.partition(":")[0], outcome)
        self.reads[label] = self.reads.get(label, 0) + 1

    def hot_keys(self) -> list[tuple[str, int]]:
        """The most-read keys of the last full minute, with their read counts.

        Reads state without changing it: /metrics collects from a thread, while the event
        loop keeps counting (copying a dict is atomic under the GIL; iterating it is not).
        """
        age = self._clock() - self._minute_started
        if age < 60:
            return list(self._last_minute)
        # The minute is over but no read has rolled it yet: the current counts are it.
        return _busiest(dict(self._key_reads)) if age < 120 else []

    def _roll_minute(self, now: float) -> None:
        # Reads per key over the last full minute (a gap of idle minutes reads as zero).
        recent = now - self._minute_started < 120
        self._last_minute = _busiest(self._key_reads) if recent else []
        self._key_reads = {}
        self._minute_started = now


def _busiest(reads: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(reads.items(), key=lambda item: item[1], reverse=True)[:HOT_KEYS_REPORTED]
