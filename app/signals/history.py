"""The signal_samples table: record a sample, read the last few, a time range, and prune.

Every read here walks an index: the primary key (key, sampled_at) for the last N samples
of each key, signal_samples_fired for "did this key ever fire", signal_samples_time for a
range and for pruning (migration 0014).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db import Connection
from app.signals.model import Signal

RECORD = """
INSERT INTO signal_samples (key, sampled_at, status, value)
SELECT * FROM unnest($1::text[], array_fill($2::timestamptz, ARRAY[cardinality($1)]),
                     $3::text[], $4::float8[])
ON CONFLICT (key, sampled_at) DO NOTHING
"""
RECENT_STATUSES = """
SELECT k.key, ARRAY(
    SELECT s.status FROM signal_samples s WHERE s.key = k.key
    ORDER BY s.sampled_at DESC LIMIT $2
) AS statuses
FROM unnest($1::text[]) AS k(key)
"""
EVER_FIRED = """
SELECT k.key FROM unnest($1::text[]) AS k(key)
WHERE EXISTS (
    SELECT 1 FROM signal_samples s WHERE s.key = k.key AND s.status IN ('warn', 'critical')
)
"""
SERIES = """
SELECT key, sampled_at, status, value FROM signal_samples
WHERE sampled_at > now() - make_interval(secs => $1)
ORDER BY key, sampled_at
"""
SUMMARY = """
SELECT key, count(*) AS samples,
       count(*) FILTER (WHERE status IN ('warn', 'critical')) AS fired,
       max(value) AS max, min(value) AS min
FROM signal_samples WHERE sampled_at > now() - make_interval(secs => $1)
GROUP BY key
"""
PRUNE = """
DELETE FROM signal_samples
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM signal_samples
    WHERE sampled_at < now() - make_interval(secs => $1) LIMIT $2
))
"""
READ_COUNTERS = """
SELECT name, value, extract(epoch FROM now() - measured_at) AS age
FROM signal_counters WHERE name = ANY($1::text[])
"""
WRITE_COUNTERS = """
INSERT INTO signal_counters (name, value, measured_at)
SELECT *, now() FROM unnest($1::text[], $2::float8[])
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, measured_at = EXCLUDED.measured_at
"""


async def record(conn: Connection, sampled_at: datetime, signals: list[Signal]) -> None:
    await conn.execute(
        RECORD,
        [s.key for s in signals],
        sampled_at,
        [s.status for s in signals],
        [s.value for s in signals],
    )


async def recent_statuses(conn: Connection, keys: list[str], count: int) -> dict[str, list[str]]:
    """The last ``count`` recorded statuses of each key, newest first."""
    rows = await conn.fetch(RECENT_STATUSES, keys, count)
    return {row["key"]: list(row["statuses"]) for row in rows}


async def ever_fired(conn: Connection, keys: list[str]) -> set[str]:
    """Keys with a warn or critical sample still within the retention."""
    return {row["key"] for row in await conn.fetch(EVER_FIRED, keys)}


async def series(
    conn: Connection, seconds: float
) -> dict[str, list[tuple[datetime, str, float | None]]]:
    found: dict[str, list[tuple[datetime, str, float | None]]] = {}
    for row in await conn.fetch(SERIES, seconds):
        found.setdefault(row["key"], []).append((row["sampled_at"], row["status"], row["value"]))
    return found


async def summary(conn: Connection, seconds: float) -> dict[str, dict[str, Any]]:
    """Per key over the last ``seconds``: samples, how many fired, min and max value."""
    return {
        row["key"]: {
            "samples": row["samples"],
            "fired": row["fired"],
            "min": row["min"],
            "max": row["max"],
        }
        for row in await conn.fetch(SUMMARY, seconds)
    }


async def prune(conn: Connection, older_than_seconds: float, batch: int = 10_000) -> int:
    deleted = 0
    while True:
        count = int((await conn.execute(PRUNE, older_than_seconds, batch)).split()[-1])
        deleted += count
        if count < batch:
            return deleted


async def read_counters(conn: Connection, names: list[str]) -> dict[str, tuple[float, float]]:
    """name -> (value, seconds since it was written)."""
    rows = await conn.fetch(READ_COUNTERS, names)
    return {row["name"]: (row["value"], float(row["age"])) for row in rows}


async def write_counters(conn: Connection, values: dict[str, float]) -> None:
    await conn.execute(WRITE_COUNTERS, list(values), list(values.values()))
