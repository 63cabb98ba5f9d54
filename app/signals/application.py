"""Signals of the application processes, from their combined reports (process.py)."""

from __future__ import annotations

from app.config import Settings
from app.signals.model import Signal, signal, unknown_signal
from app.signals.process import Combined, count_above, quantile

NO_PROCESS = "no web process reported in the last intervals: start `app serve` (or `app dev`)"


def application_signals(c: Combined, s: Settings) -> list[Signal]:
    window = round(c.window_seconds, 3)
    if c.processes == 0:
        return [
            unknown_signal(key, unit, warn, critical, 0, NO_PROCESS)
            for key, unit, warn, critical in _thresholds(s)
        ]
    few_requests = f"fewer than {s.signal_min_requests} requests in the window"
    graded = c.requests >= s.signal_min_requests
    p50 = quantile(c.http_buckets, 0.5)
    p99 = quantile(c.http_buckets, 0.99)
    slow = count_above(c.http_buckets, s.signal_slow_response_seconds)
    pool_p99 = quantile(c.pool_buckets, 0.99)
    reads = sum(c.cache.values())
    hits = c.cache.get("hit", 0.0) + c.cache.get("l1_hit", 0.0)
    hottest = c.hot_keys[0] if c.hot_keys else ("", 0.0)
    l1_share = c.cache.get("l1_hit", 0.0) / reads if reads else 0.0
    backend_reads = reads - c.cache.get("l1_hit", 0.0)
    latency = (
        "requests are slow: find the slowest routes in /metrics "
        "(http_request_duration_seconds), index their queries, cache their reads"
    )
    hot = signal(
        "cache.hot_keys",
        hottest[1],
        "reads/min",
        s.signal_hot_key_reads_per_minute,
        s.signal_hot_key_critical_reads_per_minute,
        60,
        fired="one key is read over and over: serve the cache from Redis "
        "(CACHE_BACKEND=redis, REDIS_URL)",
        ok="no key read often enough to matter",
        flag="CACHE_BACKEND",
        details=[f"{key}: {count:.0f} reads/min" for key, count in c.hot_keys[:5]],
    )
    if hot.fired and l1_share >= s.signal_hot_key_l1_share:
        # Reads served from the process's own memory never reach the backend: moving the
        # backend to Redis would change nothing the database feels.
        hot = hot.with_advice(
            f"one key is read over and over, but L1 serves {l1_share:.0%} of cache reads "
            "in process: the backend sees few of them, Redis would not help",
            None,
        )
    return [
        hot,
        _cache_wait_signal(c.cache_waits, backend_reads, window, s),
        signal(
            "http.latency_p50",
            _ms(p50) if graded else None,
            "ms",
            s.signal_http_p50_warn_ms,
            s.signal_http_p50_critical_ms,
            window,
            fired=latency,
            ok="typical requests are fast",
            unknown=few_requests,
        ),
        signal(
            "http.latency_p99",
            _ms(p99) if graded else None,
            "ms",
            s.signal_http_p99_warn_ms,
            s.signal_http_p99_critical_ms,
            window,
            fired=latency + "; if job work shares the process, JOBS_INLINE_WORKER=false",
            ok="the slowest requests are fast enough",
            flag="JOBS_INLINE_WORKER",
            unknown=few_requests,
        ),
        signal(
            "http.slow_responses",
            slow,
            "responses",
            s.signal_slow_responses_warn,
            s.signal_slow_responses_critical,
            window,
            fired=f"responses took over {s.signal_slow_response_seconds:g} s: move the slow "
            "work into a job (app.jobs.enqueue) and answer at once",
            ok=f"no response over {s.signal_slow_response_seconds:g} s",
        ),
        signal(
            "http.error_rate",
            round(c.errors / c.requests, 5) if graded else None,
            "ratio",
            s.signal_error_rate_warn,
            s.signal_error_rate_critical,
            window,
            fired="server errors: read the 5xx in the logs (request ids) or Sentry",
            ok="few server errors",
            unknown=few_requests,
            details=[f"{c.errors:.0f} of {c.requests:.0f} requests"],
        ),
        signal(
            "db.pool_wait",
            _ms(pool_p99) or 0.0,
            "ms",
            s.signal_pool_wait_ms,
            s.signal_pool_wait_critical_ms,
            window,
            fired="requests wait for a pooled connection: raise DB_POOL_MAX if the server "
            "has connections to spare, else pool them (DB_POOL_MODE=pgbouncer)",
            ok="a pooled connection is there when asked for",
            flag="DB_POOL_MODE",
            details=[f"p99 wait; {c.pool_in_use:.0f} of {c.pool_max:.0f} in use now"],
        ),
        signal(
            "cache.hit_ratio",
            round(hits / reads, 4) if reads >= s.signal_min_requests else None,
            "ratio",
            s.signal_cache_hit_ratio_warn,
            s.signal_cache_hit_ratio_critical,
            window,
            lower_is_worse=True,
            fired="cache reads miss: check TTLs and invalidation of the busiest prefixes "
            "(cache_reads in /metrics)",
            ok="cache reads mostly hit",
            unknown=f"fewer than {s.signal_min_requests} cache reads in the window",
        ),
        signal(
            "host.cpu",
            c.cpu_percent,
            "percent",
            s.signal_db_cpu_percent,
            s.signal_db_cpu_critical_percent,
            window,
            fired="the host's CPU is busy: a larger machine, or split the worker onto "
            "its own (JOBS_INLINE_WORKER=false)",
            ok="CPU to spare",
            unknown="/proc/stat is not readable here, or no clock tick passed in the window",
        ),
        signal(
            "host.memory",
            c.memory_percent,
            "percent",
            s.signal_memory_percent,
            s.signal_memory_critical_percent,
            0,
            fired="memory runs short: lower WEB_CONCURRENCY or DB_POOL_MAX, or a larger machine",
            ok="memory to spare",
            unknown="/proc/meminfo is not readable here",
        ),
    ]


def _cache_wait_signal(waits: float, backend_reads: float, window: float, s: Settings) -> Signal:
    """Share of the reads that reached the backend and found its connections all busy.

    Such reads wait in batches (app/cache/coalesce.py): a short wait each, but a share that
    stays high means the cache's CACHE_POOL_SIZE connections are what requests queue on.
    """
    value: float | None = None
    unknown = f"fewer than {s.signal_min_requests} backend cache reads in the window"
    if s.cache_backend == "redis":
        unknown = "on Redis, commands that wait for a connection are redis_pool_waits_total"
    elif backend_reads >= s.signal_min_requests:
        value = round(min(waits / backend_reads, 1.0), 4)
    return signal(
        "cache.connection_waits",
        value,
        "ratio",
        s.signal_cache_wait_share,
        s.signal_cache_wait_critical_share,
        window,
        fired="cache reads wait for a cache connection: raise CACHE_POOL_SIZE if the database "
        "has connections to spare, else serve the cache from Redis (CACHE_BACKEND=redis)",
        ok="a cache connection is free when a read needs one",
        flag="CACHE_BACKEND",
        unknown=unknown,
        details=[f"{waits:.0f} of {backend_reads:.0f} backend reads waited"],
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _thresholds(s: Settings) -> list[tuple[str, str, float, float]]:
    return [
        ("http.latency_p50", "ms", s.signal_http_p50_warn_ms, s.signal_http_p50_critical_ms),
        ("http.latency_p99", "ms", s.signal_http_p99_warn_ms, s.signal_http_p99_critical_ms),
        (
            "http.slow_responses",
            "responses",
            s.signal_slow_responses_warn,
            s.signal_slow_responses_critical,
        ),
        ("http.error_rate", "ratio", s.signal_error_rate_warn, s.signal_error_rate_critical),
        ("db.pool_wait", "ms", s.signal_pool_wait_ms, s.signal_pool_wait_critical_ms),
        (
            "cache.hit_ratio",
            "ratio",
            s.signal_cache_hit_ratio_warn,
            s.signal_cache_hit_ratio_critical,
        ),
        (
            "cache.connection_waits",
            "ratio",
            s.signal_cache_wait_share,
            s.signal_cache_wait_critical_share,
        ),
        (
            "cache.hot_keys",
            "reads/min",
            s.signal_hot_key_reads_per_minute,
            s.signal_hot_key_critical_reads_per_minute,
        ),
        ("host.cpu", "percent", s.signal_db_cpu_percent, s.signal_db_cpu_critical_percent),
        ("host.memory", "percent", s.signal_memory_percent, s.signal_memory_critical_percent),
    ]
