"""The cache: ``from app.cache import cache`` (the open services' ``Cache``).

    user = await cache.get(f"user:{user_id}")                       # None on a miss
    await cache.set(f"user:{user_id}", {"name": "Ada"}, ttl=60)
    stats = await cache.get_or_set(f"stats:{user_id}", load_stats, ttl=300)
    await cache.delete(f"user:{user_id}")
    await cache.delete_prefix(f"report:{user_id}:")                 # see its cost below
    hits = await cache.incr(f"hits:{day}", ttl=86_400)

Values are anything orjson serialises (dicts, lists, str, numbers, bools, None; datetimes
and UUIDs come back as strings): they are stored as JSON bytes and returned decoded.

Tiers, in the order a read tries them:

1. **L1**, in this process (CACHE_L1_MAX_ENTRIES, 0 = off): an LRU of decoded values, each
   kept at most CACHE_L1_TTL_SECONDS and never past its backend expiry. Every write
   announces the key to every other process (NOTIFY on Postgres, PUBLISH on Redis, in the
   same round trip as the write), which evicts it from their L1 — measured delay in
   docs/benchmarks.md. The announcements arrive through the process's notifier (the
   Postgres one, or the Redis one with CACHE_BACKEND=redis). A process serves from L1 only
   while that notifier is connected; when it drops, L1 is bypassed and emptied, so a lost
   message can never leave a stale value behind for longer than it takes to notice.
2. **The backend**, shared by all processes, chosen by CACHE_BACKEND: ``postgres`` (an
   UNLOGGED table, on connections of its own) or ``redis`` (on the services' Redis client,
   which the other Redis backends share).

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
CACHE_MAX_ENTRIES rows (oldest written evicted first by the purge job); ``delete_prefix``
on Redis SCANs the whole keyspace, so its cost grows with every key stored, not with the
matches.

Modules: ``front.py`` (``Cache``, composing the rest), ``invalidation.py`` (L1 and its
announcements), ``local.py`` (the LRU itself), ``stampede.py`` (get_or_set's loads),
``calls.py`` (the timeout and error policy), ``accounting.py`` (hit rates, hot keys),
``backend.py`` (the backend protocol, keys), ``postgres.py`` + ``connections.py`` and
``redis.py`` (the backends), ``metrics.py``, ``jobs.py`` (the purge job), ``http.py``
(ETags for GETs).
"""

from __future__ import annotations

from typing import Any, cast

from app.cache.backend import CacheBackend, CacheClosedError, check_key, create_backend, key_prefix
from app.cache.front import Cache
from app.current import Current

__all__ = [
    "Cache",
    "CacheBackend",
    "CacheClosedError",
    "cache",
    "check_key",
    "create_backend",
    "current_cache",
    "key_prefix",
]

current_cache: Current[Cache] = Current("the cache")


class _CurrentCache:
    """``cache``: every attribute is the open services' Cache's (ServicesNotOpen without)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(current_cache.get(), name)


cache = cast(Cache, _CurrentCache())
