"""A leader lease for job maintenance, per-user data versions, and indexes to prune tokens.

- maintenance_leases: one row per elected role (``jobs``: rescue of expired leases,
  queue sampling, periodic-job scheduling). A process becomes leader with an upsert that
  succeeds only when the row is its own or its lease ran out, so a leader that dies is
  replaced once its lease passes; everything happens in short transactions, so it works
  behind PgBouncer in transaction mode (no session advisory locks).
- user_data_versions: the version of each user's task and project data, bumped in the
  transaction of every write. ETags and cached list pages are keyed by it, so a 304 is
  never answered for data that changed — the version commits with the data, or not at all.
- refresh_tokens_expiry and one_time_tokens_expiry: the pruning job deletes expired and
  used tokens by expires_at in batches; without them each batch would scan the table.
  Plain CREATE INDEX: it blocks writes to these tables while it builds (seconds at
  millions of rows); build them CONCURRENTLY by hand first on a large live table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE maintenance_leases (
        name        text PRIMARY KEY,
        holder      text NOT NULL,
        expires_at  timestamptz NOT NULL
    )
    """)
    op.execute("""
    CREATE TABLE user_data_versions (
        user_id  bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        version  bigint NOT NULL DEFAULT 1
    )
    """)
    op.execute("CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at)")
    op.execute("CREATE INDEX one_time_tokens_expiry ON one_time_tokens (expires_at)")


def downgrade() -> None:
    op.execute("DROP INDEX one_time_tokens_expiry")
    op.execute("DROP INDEX refresh_tokens_expiry")
    op.execute("DROP TABLE user_data_versions")
    op.execute("DROP TABLE maintenance_leases")
