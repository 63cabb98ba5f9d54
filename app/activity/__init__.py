"""Activity log: what each user did, in monthly range partitions of one table.

    from app.activity import record
    await record(conn, user_id, "task.created", ("task", task.id), {"title": task.title})

``record`` writes on the caller's connection, inside the caller's transaction: the log
row commits or rolls back with the action it describes, so the log never disagrees with
the data. It stamps the request id of the current request (or job).

The table is ``PARTITION BY RANGE (created_at)`` (migration 0006); ``partitions.py`` makes
partitions ahead and retires old ones (``app activity maintain``, and a periodic job);
``feed.py`` reads a user's feed with keyset pagination that touches only the partitions
in range. ``record_many`` is the bulk path (COPY) for imports, seeds and benchmarks.

When to think further: past ~100M rows per table (SIGNAL_TABLE_ROWS) partitioning is what
keeps indexes in memory and retention cheap — dropping a month is a catalog change, not a
DELETE of millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from app.db import Connection
from app.observability.logging import request_id_var

__all__ = ["ActivityRow", "record", "record_many"]

INSERT_ACTIVITY = """
INSERT INTO activity_logs (user_id, action, subject_type, subject_id, metadata, request_id)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id
"""
COPY_COLUMNS = (
    "user_id",
    "action",
    "subject_type",
    "subject_id",
    "metadata",
    "request_id",
    "created_at",
)

# (user_id, action, subject_type, subject_id, metadata, created_at)
ActivityRow = tuple[int, str, str | None, int | None, dict[str, Any], datetime]


async def record(
    conn: Connection,
    actor: int,
    action: str,
    subject: tuple[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Log ``action`` by user ``actor`` on ``subject`` in the caller's transaction."""
    subject_type, subject_id = subject if subject else (None, None)
    row_id: int = await conn.fetchval(
        INSERT_ACTIVITY,
        actor,
        action,
        subject_type,
        subject_id,
        metadata or {},
        request_id_var.get(),
    )
    return row_id


async def record_many(conn: Connection, rows: Iterable[ActivityRow]) -> int:
    """Bulk insert with COPY (rows are routed to their partitions); returns the count."""
    records: Sequence[tuple[Any, ...]] = [
        (user_id, action, s_type, s_id, meta, None, created_at)
        for user_id, action, s_type, s_id, meta, created_at in rows
    ]
    await conn.copy_records_to_table("activity_logs", records=records, columns=COPY_COLUMNS)
    return len(records)
