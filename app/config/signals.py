"""Thresholds of the scaling signals, and how the advisor samples them (docs/signals.md).

Defaults come from the staged-scaling checklists the project is built on: common query mean
> 200 ms, same data fetched > 100x/minute, responses > 3 s, CPU > 70 % / 90 %, memory > 80 %
/ 90 %, DB connections > 70 % / 90 %, queue depth > 1,000 / 10,000, job wait > 30 s / 5 min,
p50 > 200 / 500 ms, p99 > 1 / 3 s, error rate 0.5 % / 2 %, tables > 100M rows, DB size at
80 % of the plan. From the database checkers: slow query mean over >= 100 calls, buffer
cache hit < 99 %, queries and idle transactions past 1 minute, replica lag > 5 s,
transaction id age 1.5 billion, unused indexes >= 10 MB (pghero, Heroku pg:diagnose).
The rest are pgfirst's own choices, each named so in its description.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class SignalSettings(BaseModel):
    """Scaling signals: the thresholds the signals advisor compares with (docs/signals.md)."""

    signal_slow_query_mean_ms: float = Field(200, description="Common query mean time.")
    signal_slow_query_critical_ms: float = Field(
        1_000, description="Query mean time, critical (pgfirst's choice)."
    )
    signal_slow_query_min_calls: int = Field(
        100, ge=1, description="Calls before a statement's mean counts (pghero)."
    )
    signal_hot_key_reads_per_minute: float = Field(100, description="Same key read per minute.")
    signal_hot_key_critical_reads_per_minute: float = Field(
        1_000, description="Same key read per minute, critical (pgfirst's choice)."
    )
    signal_hot_key_l1_share: float = Field(
        0.9,
        description="Share of cache reads served by L1 from which a hot key needs no Redis "
        "(pgfirst's choice).",
    )
    signal_slow_response_seconds: float = Field(3.0, description="HTTP response time.")
    signal_slow_responses_warn: int = Field(
        1, ge=1, description="Responses slower than that per window (pgfirst's choice)."
    )
    signal_slow_responses_critical: int = Field(
        10, ge=1, description="Responses slower than that per window (pgfirst's choice)."
    )
    signal_db_cpu_percent: float = Field(70, description="Database/host CPU, sustained.")
    signal_db_cpu_critical_percent: float = Field(90, description="Host CPU, critical.")
    signal_memory_percent: float = Field(80, description="Host memory in use.")
    signal_memory_critical_percent: float = Field(90, description="Host memory, critical.")
    signal_read_share: float = Field(0.8, description="Share of statements that are reads.")
    signal_read_share_critical: float = Field(
        0.95, description="Share of reads, critical (pgfirst's choice)."
    )
    signal_read_min_statements_per_second: float = Field(
        50, description="Load below which the read share is not graded (pgfirst's choice)."
    )
    signal_rate_min_window_seconds: float = Field(
        10,
        ge=0,
        description="Shortest time between recorded samples over which a rate (read share, "
        "publish rate) is graded (pgfirst's choice).",
    )
    signal_connections_share: float = Field(0.7, description="Connections / max_connections.")
    signal_connections_critical_share: float = Field(
        0.9, description="Connections / max_connections, critical."
    )
    signal_pool_wait_ms: float = Field(100, description="Wait for a pool connection (exhausted).")
    signal_pool_wait_critical_ms: float = Field(
        1_000, description="p99 wait for a pool connection, critical (pgfirst's choice)."
    )
    signal_db_hit_ratio_warn: float = Field(0.99, description="Buffer cache hit ratio (pghero).")
    signal_db_hit_ratio_critical: float = Field(
        0.95, description="Buffer cache hit ratio, critical (pgfirst's choice)."
    )
    signal_long_query_seconds: float = Field(60, description="Active query age (pg:diagnose).")
    signal_long_query_critical_seconds: float = Field(
        300, description="Active query age, critical (pgfirst's choice)."
    )
    signal_idle_in_transaction_seconds: float = Field(
        60, description="Idle-in-transaction age (pg:diagnose)."
    )
    signal_idle_in_transaction_critical_seconds: float = Field(
        300, description="Idle-in-transaction age, critical (pgfirst's choice)."
    )
    signal_db_size_limit_bytes: int = Field(
        8 * 1024**3, ge=1, description="The plan's database size (8 GiB: a common paid tier)."
    )
    signal_db_size_share: float = Field(0.8, description="Database size / plan limit.")
    signal_db_size_critical_share: float = Field(0.9, description="Size / limit, critical.")
    signal_queue_depth_warn: int = Field(1_000, description="Jobs available and waiting.")
    signal_queue_depth_critical: int = Field(10_000, description="Jobs available and waiting.")
    signal_job_wait_warn_seconds: float = Field(30, description="Oldest available job's wait.")
    signal_job_wait_critical_seconds: float = Field(300, description="Oldest job's wait.")
    signal_dead_jobs_warn: int = Field(
        1, ge=1, description="Jobs dead in the window (pgfirst's choice)."
    )
    signal_dead_jobs_critical: int = Field(
        100, ge=1, description="Jobs dead in the window, critical (pgfirst's choice)."
    )
    signal_http_p50_warn_ms: float = Field(200, description="HTTP p50 latency.")
    signal_http_p50_critical_ms: float = Field(500, description="HTTP p50 latency.")
    signal_http_p99_warn_ms: float = Field(1_000, description="HTTP p99 latency.")
    signal_http_p99_critical_ms: float = Field(3_000, description="HTTP p99 latency.")
    signal_error_rate_warn: float = Field(0.005, description="Share of 5xx responses.")
    signal_error_rate_critical: float = Field(0.02, description="Share of 5xx responses.")
    signal_min_requests: int = Field(
        20, ge=1, description="Requests (or cache reads) in the window before rates are graded."
    )
    signal_cache_hit_ratio_warn: float = Field(
        0.8, description="App cache hit ratio, L1 and backend (pgfirst's choice)."
    )
    signal_cache_hit_ratio_critical: float = Field(
        0.5, description="App cache hit ratio, critical (pgfirst's choice)."
    )
    signal_cache_wait_share: float = Field(
        0.1,
        description="Share of backend cache reads that found every cache connection busy "
        "(pgfirst's choice).",
    )
    signal_cache_wait_critical_share: float = Field(
        0.5, description="Share of backend cache reads that waited, critical (pgfirst's choice)."
    )
    signal_table_rows: int = Field(100_000_000, description="Rows before partitioning pays.")
    signal_table_rows_critical: int = Field(
        1_000_000_000, description="Rows in one table, critical (pgfirst's choice)."
    )
    signal_replica_lag_seconds: float = Field(5, description="Replica replay lag (pghero).")
    signal_replica_lag_critical_seconds: float = Field(
        30, description="Replica replay lag, critical (pgfirst's choice)."
    )
    signal_notify_queue_usage: float = Field(
        0.5, description="pg_notification_queue_usage() share (pgfirst's own choice)."
    )
    signal_notify_queue_usage_critical: float = Field(
        0.9, description="pg_notification_queue_usage(), critical (pgfirst's choice)."
    )
    signal_xid_age_warn: int = Field(1_500_000_000, description="Transaction id age (pghero).")
    signal_xid_age_critical: int = Field(
        2_000_000_000, description="Transaction id age, critical (wraparound near 2.1 billion)."
    )
    signal_unused_index_bytes: int = Field(
        10 * 1024**2, description="Size from which a never-scanned index counts (pghero)."
    )
    signal_unused_indexes_warn: int = Field(1, ge=1, description="Unused indexes that size.")
    signal_unused_indexes_critical: int = Field(
        5, ge=1, description="Unused indexes that size, critical (pgfirst's choice)."
    )
    signal_publish_rate_warn: float = Field(
        500, description="Events published per second (pgfirst's choice: NOTIFY's commit lock)."
    )
    signal_publish_rate_critical: float = Field(
        2_000, description="Events published per second, critical (pgfirst's choice)."
    )
    signal_default_partition_rows_warn: int = Field(
        1, ge=1, description="Rows in the activity log's DEFAULT partition."
    )
    signal_default_partition_rows_critical: int = Field(
        10_000, ge=1, description="Rows in the DEFAULT partition, critical (pgfirst's choice)."
    )
    # How the advisor measures.
    signal_window_seconds: float = Field(
        300, gt=0, description="Window of the HTTP, pool and cache signals of each process."
    )
    signal_report_seconds: float = Field(
        15, gt=0, description="How often each web process writes its window to the database."
    )
    signal_hysteresis_samples: int = Field(
        3, ge=1, description="Consecutive fired samples before a flag is recommended."
    )
    signal_retention_hours: float = Field(168, gt=0, description="Signal samples kept.")
