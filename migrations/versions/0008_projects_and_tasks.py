"""The example domain: projects and tasks, owned per user.

- projects has UNIQUE (user_id, id) so that tasks can reference (user_id, project_id):
  the composite foreign key makes it impossible, in the schema itself, for a task to point
  at another user's project. Deleting a project sets only tasks.project_id to NULL.
- tasks (user_id, created_at DESC, id DESC) serves the list: WHERE user_id = $1 ORDER BY
  created_at DESC, id DESC LIMIT n, and its keyset continuation.
- tasks (project_id, created_at DESC, id DESC) WHERE project_id IS NOT NULL serves the
  project filter and the foreign key's ON DELETE lookup; tasks without a project (often
  most of them) take no space in it.
- projects (user_id, created_at DESC, id DESC) serves the project list.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE projects (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id     bigint NOT NULL REFERENCES users ON DELETE CASCADE,
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        color       text NOT NULL DEFAULT '#6b7280' CHECK (color ~ '^#[0-9a-f]{6}$'),
        created_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (user_id, id)
    )
    """)
    op.execute("CREATE INDEX projects_user_created ON projects (user_id, created_at DESC, id DESC)")
    op.execute("""
    CREATE TABLE tasks (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id       bigint NOT NULL REFERENCES users ON DELETE CASCADE,
        project_id    bigint,
        title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
        body          text NOT NULL DEFAULT '' CHECK (length(body) <= 20000),
        completed_at  timestamptz,
        due_at        timestamptz,
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        FOREIGN KEY (user_id, project_id) REFERENCES projects (user_id, id)
            ON DELETE SET NULL (project_id)
    )
    """)
    op.execute("CREATE INDEX tasks_user_created ON tasks (user_id, created_at DESC, id DESC)")
    op.execute("""
    CREATE INDEX tasks_project_created ON tasks (project_id, created_at DESC, id DESC)
    WHERE project_id IS NOT NULL
    """)


def downgrade() -> None:
    op.execute("DROP TABLE tasks")
    op.execute("DROP TABLE projects")
