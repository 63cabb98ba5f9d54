"""The job queue: one table, states guarded by the schema.

States: available → running → succeeded | dead | cancelled, and running → available on a
retry. "Scheduled" is an available job whose run_at is in the future and "retryable" an
available job with attempt > 0: the claim query treats them alike, so they share a state.
CHECK constraints refuse impossible rows (a running job without a lease, a finished job
without finished_at, more attempts than allowed).

Indexes, each for one query:
- jobs_claim (priority DESC, run_at, id) WHERE state = 'available': the claim
  (FOR UPDATE SKIP LOCKED ... ORDER BY priority DESC, run_at, id LIMIT n) reads it in
  order and stops after n rows; the queue is a filter, because a worker serves several
  queues and `queue = ANY(...)` before the sort columns would force a sort of every
  waiting job on each claim. Partial, so it holds only waiting jobs and stays small
  however many finished rows the table keeps.
- jobs_lease (locked_until) WHERE state = 'running': rescuing jobs whose worker died.
- jobs_unique_key (unique_key) WHERE unfinished: dedupe while a job with that key waits or
  runs; afterwards the key is free again.
- jobs_finished (finished_at) WHERE finished: pruning past the retention.

Churn: every job is inserted, updated twice and deleted by the pruner, so autovacuum is
told to visit after 1 % of the table changes instead of 20 %, and fillfactor 90 leaves room
on each page for the updated row versions.

job_schedule holds the last slot each periodic job ran for: the UPDATE ... WHERE last_slot
< $slot that claims a slot succeeds in exactly one worker.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TYPE job_state AS ENUM ('available', 'running', 'succeeded', 'dead', 'cancelled')"
    )
    op.execute("""
    CREATE TABLE jobs (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue         text NOT NULL DEFAULT 'default' CHECK (length(queue) BETWEEN 1 AND 64),
        name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        args          jsonb NOT NULL DEFAULT '{}',
        state         job_state NOT NULL DEFAULT 'available',
        priority      smallint NOT NULL DEFAULT 0,
        run_at        timestamptz NOT NULL DEFAULT now(),
        attempt       integer NOT NULL DEFAULT 0,
        max_attempts  integer NOT NULL DEFAULT 20 CHECK (max_attempts >= 1),
        locked_until  timestamptz,
        locked_by     text,
        unique_key    text,
        errors        jsonb NOT NULL DEFAULT '[]',
        request_id    text,
        created_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz,
        CONSTRAINT jobs_lease_iff_running
            CHECK ((state = 'running') = (locked_until IS NOT NULL AND locked_by IS NOT NULL)),
        CONSTRAINT jobs_finished_iff_final
            CHECK ((state IN ('succeeded', 'dead', 'cancelled')) = (finished_at IS NOT NULL)),
        CONSTRAINT jobs_attempts_bounded CHECK (attempt BETWEEN 0 AND max_attempts)
    ) WITH (
        fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02
    )
    """)
    op.execute("""
    CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id)
    WHERE state = 'available'
    """)
    op.execute("CREATE INDEX jobs_lease ON jobs (locked_until) WHERE state = 'running'")
    op.execute("""
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
    """)
    op.execute("CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL")
    op.execute("""
    CREATE TABLE job_schedule (
        name       text PRIMARY KEY,
        last_slot  timestamptz NOT NULL
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE job_schedule")
    op.execute("DROP TABLE jobs")
    op.execute("DROP TYPE job_state")
