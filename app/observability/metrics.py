"""Prometheus metrics of the web process (and of any process that imports them).

Metrics live in prometheus_client's default registry. With several uvicorn workers each
process has its own numbers; run one worker per machine (the Fly default) or set
PROMETHEUS_MULTIPROC_DIR as prometheus_client documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
)
DB_POOL_ACQUIRE_SECONDS = Histogram(
    "db_pool_acquire_seconds",
    "Time spent waiting for a pooled connection.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
REDIS_POOL_WAITS = Counter(
    "redis_pool_waits_total",
    "Redis commands that waited for a connection: all REDIS_MAX_CONNECTIONS were in use.",
)

DB_READ_ROUTES = Counter(
    "db_read_routes_total",
    "Lag-tolerant reads (read=True) by the server that took them (replica, primary) and why.",
    ["target", "reason"],
)
DB_REPLICA_HEALTHY = Gauge(
    "db_replica_healthy", "1 while the replica takes reads, 0 while down or lagging.", ["replica"]
)
DB_REPLICA_LAG_BYTES = Gauge(
    "db_replica_lag_bytes", "WAL the replica has not replayed yet, in bytes.", ["replica"]
)
DB_REPLICA_LAG_SECONDS = Gauge(
    "db_replica_lag_seconds",
    "Age of the last replayed transaction; 0 when everything received is replayed.",
    ["replica"],
)


class PoolCollector(Collector):
    """Reads pool sizes at scrape time from a callable (registered by the app lifespan)."""

    def __init__(self, read_stats: Callable[[], Iterable[tuple[str, int, int, int]]]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterable[Metric]:
        size = GaugeMetricFamily("db_pool_size", "Open connections in the pool.", labels=["pool"])
        in_use = GaugeMetricFamily(
            "db_pool_in_use", "Connections handed out right now.", labels=["pool"]
        )
        maximum = GaugeMetricFamily("db_pool_max", "Largest size of the pool.", labels=["pool"])
        for role, open_connections, used, max_size in self._read_stats():
            size.add_metric([role], open_connections)
            in_use.add_metric([role], used)
            maximum.add_metric([role], max_size)
        yield from (size, in_use, maximum)


def register_collector(collector: Collector) -> Callable[[], None]:
    """Register on the default registry; returns the function that unregisters it."""
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
