"""The signals advisor's memory: what each process measured, and every signal over time.

- signal_process_reports: one row per live process (web or worker), upserted every
  SIGNAL_REPORT_SECONDS with what only that process can see — its HTTP latencies and
  statuses, pool waits, cache reads and hot keys, host CPU and memory — aggregated over the
  last SIGNAL_WINDOW_SECONDS. The advisor sums the rows reported recently; rows of dead
  processes are ignored, then pruned. UNLOGGED: a crash loses a few seconds of windows that
  the processes write again, and the upserts write no WAL.
- signal_samples: one row per signal per sample (the periodic ``pgfirst.sample_signals``
  job, every minute): status and value. Hysteresis reads the last few samples of a key
  (primary key), charts and ``app signals --since`` a time range (signal_samples_time, also
  used to prune past SIGNAL_RETENTION_HOURS), and "was this signal ever fired" reads the
  small partial index signal_samples_fired.
- signal_counters: the last value of cumulative database counters (statement calls, events
  published), so the next sample turns them into a rate over the time between samples.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE UNLOGGED TABLE signal_process_reports (
        process      text PRIMARY KEY,
        reported_at  timestamptz NOT NULL DEFAULT now(),
        report       jsonb NOT NULL
    )
    """)
    op.execute("""
    CREATE TABLE signal_samples (
        key         text NOT NULL,
        sampled_at  timestamptz NOT NULL,
        status      text NOT NULL CHECK (status IN ('ok', 'warn', 'critical', 'unknown')),
        value       double precision,
        PRIMARY KEY (key, sampled_at)
    )
    """)
    op.execute("CREATE INDEX signal_samples_time ON signal_samples (sampled_at)")
    op.execute(
        "CREATE INDEX signal_samples_fired ON signal_samples (key)"
        " WHERE status IN ('warn', 'critical')"
    )
    op.execute("""
    CREATE TABLE signal_counters (
        name         text PRIMARY KEY,
        value        double precision NOT NULL,
        measured_at  timestamptz NOT NULL
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE signal_counters")
    op.execute("DROP TABLE signal_samples")
    op.execute("DROP TABLE signal_process_reports")
