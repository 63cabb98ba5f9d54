"""Thresholds of the scaling signals (docs/signals.md).

Defaults come from the staged-scaling checklists the project is built on: common query mean
> 200 ms, same data fetched > 100x/minute, responses > 3 s, CPU > 70 % sustained, queue depth
> 1,000 / 10,000, job wait > 30 s / 5 min, p50 > 200 / 500 ms, p99 > 1 / 3 s, error rate
> 0.5 % / 2 %, tables > 100M rows.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class SignalSettings(BaseModel):
    """Scaling signals: the thresholds the signals advisor compares with (docs/signals.md)."""

    signal_slow_query_mean_ms: float = Field(200, description="Common query mean time.")
    signal_hot_key_reads_per_minute: float = Field(100, description="Same key read per minute.")
    signal_slow_response_seconds: float = Field(3.0, description="HTTP response time.")
    signal_db_cpu_percent: float = Field(70, description="Database/host CPU, sustained.")
    signal_read_share: float = Field(0.8, description="Share of statements that are reads.")
    signal_connections_share: float = Field(0.7, description="Connections / max_connections.")
    signal_pool_wait_ms: float = Field(100, description="Wait for a pool connection (exhausted).")
    signal_queue_depth_warn: int = Field(1_000, description="Jobs available and waiting.")
    signal_queue_depth_critical: int = Field(10_000, description="Jobs available and waiting.")
    signal_job_wait_warn_seconds: float = Field(30, description="Oldest available job's wait.")
    signal_job_wait_critical_seconds: float = Field(300, description="Oldest job's wait.")
    signal_http_p50_warn_ms: float = Field(200, description="HTTP p50 latency.")
    signal_http_p50_critical_ms: float = Field(500, description="HTTP p50 latency.")
    signal_http_p99_warn_ms: float = Field(1_000, description="HTTP p99 latency.")
    signal_http_p99_critical_ms: float = Field(3_000, description="HTTP p99 latency.")
    signal_error_rate_warn: float = Field(0.005, description="Share of 5xx responses.")
    signal_error_rate_critical: float = Field(0.02, description="Share of 5xx responses.")
    signal_table_rows: int = Field(100_000_000, description="Rows before partitioning pays.")
    signal_notify_queue_usage: float = Field(
        0.5, description="pg_notification_queue_usage() share (pgfirst's own choice)."
    )
