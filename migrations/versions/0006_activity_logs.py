"""Activity logs, range-partitioned by created_at.

The parent holds no rows. Partitions (one per month by default) are made ahead of time and
retired past the retention by app/activity/partitions.py, run as a periodic job; the
DEFAULT partition catches rows no partition covers, and maintenance drains it.

- ids come from a sequence rather than an identity column, so the same SQL runs on
  PostgreSQL versions before 17 (which refuse identity columns on partitioned tables).
- The primary key must contain the partition key: (created_at, id).
- (user_id, created_at DESC, id DESC) serves the feed: WHERE user_id = $1 AND
  (created_at, id) < cursor ORDER BY created_at DESC, id DESC LIMIT n. Declared on the
  parent, it is created on every partition, present and future.
- No foreign key to users: the log outlives the rows it describes, and a cascading delete
  into months of partitions is exactly the long lock partitioning avoids.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-23
"""

from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE activity_logs_id_seq AS bigint")
    op.execute("""
    CREATE TABLE activity_logs (
        id            bigint NOT NULL DEFAULT nextval('activity_logs_id_seq'),
        user_id       bigint NOT NULL,
        action        text NOT NULL CHECK (length(action) BETWEEN 1 AND 64),
        subject_type  text CHECK (length(subject_type) <= 64),
        subject_id    bigint,
        metadata      jsonb NOT NULL DEFAULT '{}',
        request_id    text,
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (created_at, id)
    ) PARTITION BY RANGE (created_at)
    """)
    op.execute("ALTER SEQUENCE activity_logs_id_seq OWNED BY activity_logs.id")
    op.execute(
        "CREATE INDEX activity_logs_user_feed ON activity_logs (user_id, created_at DESC, id DESC)"
    )
    op.execute("CREATE TABLE activity_logs_default PARTITION OF activity_logs DEFAULT")
    # Partitions for the current period and the ones ahead are made by `app activity
    # maintain` (run by `app migrate`'s callers and periodically), not here: a migration
    # would freeze today's date into the schema history.


def downgrade() -> None:
    op.execute("DROP TABLE activity_logs")  # drops every partition with it
