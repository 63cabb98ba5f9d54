"""events.xid and events.horizon: a resume by id no longer misses a late commit.

Event ids are assigned at INSERT, transactions commit in their own order: event 100 can
commit after event 101. A client that saw 101 live and reconnected before 100 was
delivered asked for ``id > 101`` and never got 100. Each event now records

- ``xid``: its transaction (``pg_current_xact_id()``), and
- ``horizon``: the oldest transaction still running when it was inserted
  (``pg_snapshot_xmin(pg_current_snapshot())``); every transaction older than that had
  ended, so its events, if any, were committed — and delivered — before this one.

A resume after event N also reads the events below N whose ``xid`` is at or past N's
``horizon``: the only ones that can have committed after N (app/pubsub/postgres.py). Both
are defaults, so publishers do not change; rows published before this revision have
neither and resume by id alone, as before. Adding the columns without a default and then
setting it rewrites nothing: old rows keep NULL.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN xid xid8, ADD COLUMN horizon xid8")
    op.execute(
        "ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id(),"
        " ALTER COLUMN horizon SET DEFAULT pg_snapshot_xmin(pg_current_snapshot())"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN horizon, DROP COLUMN xid")
