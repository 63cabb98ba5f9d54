"""Search over tasks: a weighted tsvector, trigrams on titles, and embeddings.

- search_vector: generated and stored, title weighted A and body B, in the text search
  configuration of SEARCH_LANGUAGE at migration time (default english); a GIN index
  serves `search_vector @@ websearch_to_tsquery(...)`. Changing the language means a new
  migration that recreates the column.
- tasks_title_trgm: GIN with gin_trgm_ops on title, for typo-tolerant `%` / similarity()
  and prefix matching.
- embedding vector(256), filled by a job after each create/update (never in the request),
  with an HNSW index for cosine distance; embedded_at tells which rows are stale.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

import os
import re

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LANGUAGE = os.environ.get("SEARCH_LANGUAGE", "english")
if not re.fullmatch(r"[a-z_]{2,40}", LANGUAGE):
    raise ValueError("SEARCH_LANGUAGE must be a text search configuration name")


def upgrade() -> None:
    # Adding a stored generated column rewrites the table under ACCESS EXCLUSIVE; on a
    # large live table, add it in a maintenance window.
    op.execute(f"""
    ALTER TABLE tasks ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('{LANGUAGE}', title), 'A') ||
        setweight(to_tsvector('{LANGUAGE}', body), 'B')
    ) STORED
    """)
    op.execute("CREATE INDEX tasks_search ON tasks USING gin (search_vector)")
    op.execute("CREATE INDEX tasks_title_trgm ON tasks USING gin (title gin_trgm_ops)")
    op.execute(
        "ALTER TABLE tasks ADD COLUMN embedding vector(256), ADD COLUMN embedded_at timestamptz"
    )
    op.execute("""
    CREATE INDEX tasks_embedding ON tasks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64)
    """)


def downgrade() -> None:
    op.execute("DROP INDEX tasks_embedding")
    op.execute("ALTER TABLE tasks DROP COLUMN embedded_at, DROP COLUMN embedding")
    op.execute("DROP INDEX tasks_title_trgm")
    op.execute("DROP INDEX tasks_search")
    op.execute("ALTER TABLE tasks DROP COLUMN search_vector")
