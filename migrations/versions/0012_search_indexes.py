"""Search indexes that serve the per-user queries at a million tasks.

- tasks_user_search replaces tasks_search: one GIN index on (user_id, search_vector), with
  btree_gin providing the GIN operator class for bigint. Every search filters by the
  caller, and with the single-column index the planner had to AND the word's bitmap with
  a bitmap of all the caller's rows from tasks_user_created — 100,000 entries for the
  largest account, most of the query's time. In one GIN index the user_id key is just one
  more posting list, and GIN intersects posting lists skipping ahead from the rarer one.
  A query on search_vector alone still uses it (GIN, unlike a btree, searches any subset
  of its columns). EXPLAIN before and after: docs/search.md, "Full-text plans".
- tasks_embedding_hnsw replaces tasks_embedding: the same HNSW index with a denser graph
  (m 24 instead of 16, ef_construction 128 instead of 64). At a million hashing-embedder
  vectors the sparser graph stopped short of 0.95 recall@10 whatever ef_search (0.94 at
  ef_search 800); this one passes it at a fraction of the exact scan's cost
  (docs/benchmarks.md). It takes about 3x longer to build, and builds fast only while the
  graph fits in maintenance_work_mem (~1.6 GB at a million rows; the server's setting
  applies here — raise it for the migration's session on a big table).
- tasks_user_vectors, a btree on user_id that carries id and embedding (INCLUDE), for
  the exact vector path of accounts below SEARCH_EXACT_SCAN_BELOW: an index-only scan
  reads a user's vectors side by side in the index's leaf pages, where the heap holds
  them one per page between everybody else's rows (10.5 ms -> 2.5 ms for a 5,100-task
  account at 1M tasks). The price: ~1.3 KB per task (1.3 GB at 1M) and one more index
  entry per embedding written.

All are plain CREATE INDEX: the migration runs in one transaction, and the builds block
writes to tasks while they run (minutes at a million rows). On a large live table, build
them first by hand (CREATE EXTENSION btree_gin, then each CREATE INDEX CONCURRENTLY with
the same name and definition) — the migration then finds them (IF NOT EXISTS) and only
drops the old ones.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute(
        "CREATE INDEX IF NOT EXISTS tasks_user_search ON tasks USING gin (user_id, search_vector)"
    )
    op.execute("DROP INDEX IF EXISTS tasks_search")
    op.execute(
        "CREATE INDEX IF NOT EXISTS tasks_user_vectors ON tasks (user_id) INCLUDE (id, embedding)"
    )
    op.execute("""
    CREATE INDEX IF NOT EXISTS tasks_embedding_hnsw ON tasks
    USING hnsw (embedding vector_cosine_ops) WITH (m = 24, ef_construction = 128)
    """)
    op.execute("DROP INDEX IF EXISTS tasks_embedding")


def downgrade() -> None:
    op.execute("""
    CREATE INDEX tasks_embedding ON tasks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64)
    """)
    op.execute("DROP INDEX tasks_embedding_hnsw")
    op.execute("DROP INDEX tasks_user_vectors")
    op.execute("CREATE INDEX tasks_search ON tasks USING gin (search_vector)")
    op.execute("DROP INDEX tasks_user_search")
    op.execute("DROP EXTENSION btree_gin")
