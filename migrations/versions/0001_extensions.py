"""Extensions every capability builds on.

- vector (pgvector): embeddings and HNSW indexes for semantic search.
- pg_trgm: trigram indexes for typo-tolerant and prefix search.
- pg_stat_statements: per-query timings behind the "slow common query" signal. It only
  collects once listed in shared_preload_libraries (the embedded server does that); where
  the role may not create it, the migration goes on without it and the signal says so.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    # The EXCEPTION clause (a subtransaction) swallows only "not installed"/"not allowed".
    op.execute("""
    DO $$
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
    EXCEPTION
        WHEN undefined_file OR insufficient_privilege OR feature_not_supported THEN
            RAISE NOTICE 'pg_stat_statements unavailable: %', SQLERRM;
    END
    $$
    """)


def downgrade() -> None:
    op.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
    op.execute("DROP EXTENSION IF EXISTS pg_trgm")
    op.execute("DROP EXTENSION IF EXISTS vector")
