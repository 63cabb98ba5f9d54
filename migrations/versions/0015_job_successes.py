"""job_successes: how many jobs each worker finished successfully, and when.

A success is deleted from ``jobs`` when the worker records it (JOBS_KEEP_SUCCEEDED off,
the default), so the table no longer says how many jobs finished. Each worker tallies the
successes it recorded and adds the tally to its row of the current second here, on a
statement it sends anyway (a claim at most once a second, every completion;
app/jobs/sql.py): one row per worker per second of work, whatever the job rate (~90,000
jobs/s on one worker are still one row a second).
/ops/jobs sums the last minute's rows by the primary key's leading column;
``pgfirst.prune_jobs`` deletes rows past an hour.

UNLOGGED: a statistic, not a record — a server crash empties it (the next minute fills it
again) and its writes add no WAL to the worker's commits.

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
