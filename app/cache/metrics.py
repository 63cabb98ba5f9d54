"""Prometheus view of the cache's in-process counters, read at scrape time.

- ``cache_reads_total{prefix, result}``: result is l1_hit, hit or miss (prefix = the key
  up to its first ``:``); hit rate = (l1_hit + hit) / all.
- ``cache_hot_key_reads_per_minute{prefix}``: reads of the single busiest key of each
  prefix over the last full minute — the "same data fetched > 100x/minute" signal.
- ``cache_errors_total{operation}``: backend calls that failed or timed out (served as
  misses), ``cache_l1_entries``, ``cache_invalidations_received_total``,
  ``cache_values_skipped_total`` (over CACHE_MAX_VALUE_BYTES).
- ``cache_read_batches_total`` / ``cache_batched_keys_total``: statements that served
  single-key reads which found every cache connection busy, and the keys they carried
  (Postgres backend, coalesce.py). Rising in steady traffic: the cache's connections are
  the bottleneck — CACHE_POOL_SIZE, or L1 taking more of the reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.cache import Cache, key_prefix


class CacheCollector(Collector):
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Metric]:
        cache = self.cache
        reads = CounterMetricFamily(
            "cache_reads", "Cache reads by key prefix and result.", labels=["prefix", "result"]
        )
        # Copies: collect() runs in a thread while the event loop updates the counters.
        for (prefix, result), count in sorted(dict(cache.reads).items()):
            reads.add_metric([prefix, result], count)
        hot = GaugeMetricFamily(
            "cache_hot_key_reads_per_minute",
            "Reads of the busiest key of each prefix over the last full minute.",
            labels=["prefix"],
        )
        busiest: dict[str, int] = {}
        for key, count in cache.hot_keys():
            prefix = key_prefix(key)
            busiest[prefix] = max(busiest.get(prefix, 0), count)
        for prefix, count in sorted(busiest.items()):
            hot.add_metric([prefix], count)
        errors = CounterMetricFamily(
            "cache_errors",
            "Cache backend calls that failed (served as misses).",
            labels=["operation"],
        )
        for operation, count in sorted(dict(cache.errors).items()):
            errors.add_metric([operation], count)
        entries = GaugeMetricFamily("cache_l1_entries", "Entries in this process's L1 tier.")
        entries.add_metric([], cache.l1_entries)
        received = CounterMetricFamily(
            "cache_invalidations_received", "L1 invalidations heard from other processes."
        )
        received.add_metric([], cache.invalidations_received)
        skipped = CounterMetricFamily(
            "cache_values_skipped", "Values not stored for exceeding CACHE_MAX_VALUE_BYTES."
        )
        skipped.add_metric([], cache.skipped_large)
        batches, batched_keys = (0, 0) if cache.backend is None else cache.backend.read_batches()
        read_batches = CounterMetricFamily(
            "cache_read_batches",
            "Statements that served single-key reads made while every cache connection was busy.",
        )
        read_batches.add_metric([], batches)
        keys = CounterMetricFamily(
            "cache_batched_keys", "Keys read by those statements (each once per statement)."
        )
        keys.add_metric([], batched_keys)
        yield from (reads, hot, errors, entries, received, skipped, read_batches, keys)
