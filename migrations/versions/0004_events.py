"""Events: the pub/sub log behind LISTEN/NOTIFY.

Every published event is a row, so payloads larger than NOTIFY's 8,000-byte limit work
(the notification then carries only the id) and a subscriber that was away — a reconnecting
listener, an SSE client sending Last-Event-ID — can replay what it missed.

- (channel, id) serves the replay query: WHERE channel = ANY($1) AND id > $2 ORDER BY id.
- BRIN on created_at serves the retention prune: ids and times grow together in an
  append-only table, so a block-range index of a few pages does the job of a B-tree.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE events (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        channel     text NOT NULL CHECK (channel ~ '^[A-Za-z0-9_.:-]{1,48}$'),
        payload     jsonb NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    )
    """)
    op.execute("CREATE INDEX events_channel_id ON events (channel, id)")
    op.execute("CREATE INDEX events_created_at_brin ON events USING brin (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE events")
