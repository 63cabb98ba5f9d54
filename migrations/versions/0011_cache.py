"""The cache tables and the user_stats materialized view.

cache_entries is UNLOGGED: no WAL on writes (a set costs about what a Redis SET costs),
not replicated, and emptied after a crash — which a cache can afford. The value is bytea:
the application serialises once (JSON via orjson) and the server stores opaque bytes, the
same bytes the Redis backend stores; jsonb would be parsed and validated on every write
and re-serialised on every read for nothing, since the cache never queries inside values.

Deliberately NO index on expires_at: an index on a column every set changes turns HOT
updates into full index updates (+30 % latency, 2x server CPU measured here). Reads
filter expired rows (`expires_at > now()`) and the purge job deletes them in batches with
a sequential scan of a table the size cap keeps bounded. The key is COLLATE "C" so its
primary-key btree also serves `delete_prefix` (LIKE 'prefix%' on a C-collated column is
a range scan of the index).

cache_locks holds the stampede locks of get_or_set (one row per key being loaded, with a
lease so a crashed loader frees its lock), apart from the entries so locks are never
seen by prefix deletes, purges or the size cap.

user_stats aggregates tasks per user; its unique index on user_id is what lets REFRESH
MATERIALIZED VIEW CONCURRENTLY run without blocking readers. matview_refreshes records
when each view was last refreshed (a column in the view would change every row on every
refresh and make CONCURRENTLY rewrite them all).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE UNLOGGED TABLE cache_entries (
        key         text COLLATE "C" PRIMARY KEY,
        value       bytea NOT NULL,
        expires_at  timestamptz,
        written_at  timestamptz NOT NULL DEFAULT now()
    )
    """)
    op.execute("""
    CREATE UNLOGGED TABLE cache_locks (
        key         text COLLATE "C" PRIMARY KEY,
        token       text NOT NULL,
        expires_at  timestamptz NOT NULL
    )
    """)
    op.execute("""
    CREATE MATERIALIZED VIEW user_stats AS
    SELECT user_id,
           count(*) AS task_count,
           count(*) FILTER (WHERE completed_at IS NOT NULL) AS completed_count,
           max(greatest(created_at, updated_at, completed_at)) AS last_activity_at
    FROM tasks
    GROUP BY user_id
    """)
    op.execute("CREATE UNIQUE INDEX user_stats_user_id ON user_stats (user_id)")
    op.execute("""
    CREATE TABLE matview_refreshes (
        name          text PRIMARY KEY,
        refreshed_at  timestamptz NOT NULL
    )
    """)
    op.execute("INSERT INTO matview_refreshes (name, refreshed_at) VALUES ('user_stats', now())")


def downgrade() -> None:
    op.execute("DROP TABLE matview_refreshes")
    op.execute("DROP MATERIALIZED VIEW user_stats")
    op.execute("DROP TABLE cache_locks")
    op.execute("DROP TABLE cache_entries")
