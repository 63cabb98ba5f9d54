"""job_successes: how many jobs each worker finished successfully, and when.

A success is deleted from ``jobs`` when the worker records it (JOBS_KEEP_SUCCEEDED off,
the default), so the table no longer says how many jobs finished. Each worker keeps a count
in memory and writes it here at most once a second while it has successes to report: one
row per worker per second of work, whatever the job rate (~90,000 jobs/s on one worker
are still one row a second). /ops/jobs sums the last minute's rows by the primary key's
leading column; ``pgfirst.prune_jobs`` deletes rows past an hour.

UNLOGGED: a statistic, not a record — a server crash empties it (the next minute fills it
again) and its inserts write no WAL. Counts reach the table after the successes commit, so
a worker killed in between under-counts its last second; ``jobs_finished_total`` in
/metrics is the exact per-process counter.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE UNLOGGED TABLE job_successes (
        counted_at  timestamptz NOT NULL DEFAULT now(),
        worker      text NOT NULL,
        succeeded   integer NOT NULL CHECK (succeeded > 0),
        PRIMARY KEY (counted_at, worker)
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE job_successes")
