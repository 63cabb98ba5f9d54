"""Signals of the job queue and the activity log, read from their tables by index.

Counts stop at the critical threshold (``LIMIT`` inside): past it the answer is critical
whatever the exact number, and a backlog of millions costs what one at the threshold does
(100,000 jobs counted in full took 21 ms; to 10,000, about 2).
"""

from __future__ import annotations

from app.config import Settings
from app.db import Connection
from app.signals.model import Signal, signal

# Capped count: past the cap the backlog is critical whatever its exact size.
QUEUE_DEPTH = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE state = 'available' AND run_at <= now() LIMIT $1
) AS waiting
"""
# The oldest available job per priority (a loose index scan over jobs_claim: one short
# descent per distinct priority instead of reading every available job).
OLDEST_JOB = """
WITH RECURSIVE priorities AS (
    (SELECT priority FROM jobs WHERE state = 'available' ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM jobs j
            WHERE j.state = 'available' AND j.priority < p.priority
            ORDER BY j.priority DESC LIMIT 1)
    FROM priorities p WHERE p.priority IS NOT NULL
)
SELECT greatest(0, extract(epoch FROM now() - min(
    (SELECT min(j.run_at) FROM jobs j WHERE j.state = 'available' AND j.priority = p.priority)
)))::float8
FROM priorities p WHERE p.priority IS NOT NULL
"""
DEAD_JOBS = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE finished_at > now() - make_interval(secs => $1) AND state = 'dead'
    -- The order makes the planner walk jobs_finished from the newest even in a generic
    -- plan (where the cutoff is unknown and a scan of the table looked as cheap).
    ORDER BY finished_at DESC LIMIT $2
) AS dead
"""
DEFAULT_PARTITION_ROWS = """
SELECT count(*) FROM (SELECT 1 FROM activity_logs_default LIMIT $1) AS stray
"""


async def job_signals(conn: Connection, s: Settings) -> list[Signal]:
    cap = s.signal_queue_depth_critical
    depth = float(await conn.fetchval(QUEUE_DEPTH, cap))
    wait = await conn.fetchval(OLDEST_JOB)
    window = s.signal_window_seconds
    dead = float(await conn.fetchval(DEAD_JOBS, window, s.signal_dead_jobs_critical))
    more_workers = (
        "jobs wait for a worker: run more `app worker` processes (or raise "
        "JOBS_CONCURRENCY), and JOBS_INLINE_WORKER=false so web processes serve only HTTP"
    )
    return [
        signal(
            "jobs.queue_depth",
            depth,
            "jobs",
            s.signal_queue_depth_warn,
            s.signal_queue_depth_critical,
            0,
            fired=more_workers,
            ok="workers keep up",
            details=[f"counted up to the critical threshold, {cap:,}"] if depth >= cap else [],
        ),
        signal(
            "jobs.oldest_wait_seconds",
            round(float(wait), 3) if wait is not None else 0.0,
            "seconds",
            s.signal_job_wait_warn_seconds,
            s.signal_job_wait_critical_seconds,
            0,
            fired=more_workers,
            ok="available jobs start promptly",
        ),
        signal(
            "jobs.dead",
            dead,
            "jobs",
            s.signal_dead_jobs_warn,
            s.signal_dead_jobs_critical,
            window,
            fired="jobs ran out of attempts: read their errors (GET /ops/jobs), fix, then "
            "`app jobs retry ID`",
            ok="no job died in the window",
        ),
    ]


async def default_partition_signal(conn: Connection, s: Settings) -> Signal:
    cap = s.signal_default_partition_rows_critical
    rows = float(await conn.fetchval(DEFAULT_PARTITION_ROWS, cap))
    return signal(
        "activity.default_partition_rows",
        rows,
        "rows",
        s.signal_default_partition_rows_warn,
        s.signal_default_partition_rows_critical,
        0,
        fired="activity rows landed in the DEFAULT partition (no partition for their "
        "time): run `app activity maintain`, and check its periodic job runs",
        ok="every activity row is in its time partition",
    )
