"""Prometheus metrics of the job queue, shared by the worker and the maintenance leader.

``jobs_available`` (queue depth) is sampled by the maintenance leader only: one process
reports it, the others leave it empty, so a sum over instances is the depth.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

JOBS_FINISHED = Counter("jobs_finished_total", "Jobs finished, by outcome.", ["outcome"])
JOB_RUN_SECONDS = Histogram("job_run_seconds", "Time a job's handler ran.", ["name"])
JOB_WAIT_SECONDS = Histogram(
    "job_wait_seconds",
    "From run_at to claim.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800),
)
QUEUE_DEPTH = Gauge("jobs_available", "Jobs available to run now, by queue.", ["queue"])
SUCCEEDED = JOBS_FINISHED.labels("succeeded")


@functools.cache
def run_seconds(name: str) -> Histogram:
    """The labelled child once per job kind (``labels()`` costs a lock and a dict per call)."""
    return JOB_RUN_SECONDS.labels(name)
