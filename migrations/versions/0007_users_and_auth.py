"""Users, refresh-token families, one-time tokens, rate-limit counters.

- users.email is stored normalised (trimmed, lower-cased; the CHECK makes sure) under a
  unique index: lookups are exact-match, and two spellings cannot make two accounts.
- users.tokens_valid_after: access tokens issued before it are refused. Password change,
  reset and logout-all move it to now(), which ends every session at once, access tokens
  included, without a denylist.
- refresh_tokens: only SHA-256 hashes are stored. A token is used once (used_at); presenting
  a used token again is theft or a replayed leak, and revokes its whole family.
- one_time_tokens: password reset and email verification, hashed, expiring, single-use.
- rate_limits is UNLOGGED: counters need no crash safety or replication, and skipping
  the WAL makes every hit several times cheaper (docs/auth.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE users (
        id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        email               text NOT NULL,
        password_hash       text NOT NULL,
        is_admin            boolean NOT NULL DEFAULT false,
        email_verified_at   timestamptz,
        tokens_valid_after  timestamptz NOT NULL DEFAULT now(),
        created_at          timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT users_email_normalised
            CHECK (email = lower(btrim(email)) AND length(email) BETWEEN 3 AND 254)
    )
    """)
    op.execute("CREATE UNIQUE INDEX users_email_key ON users (email)")
    op.execute("""
    CREATE TABLE refresh_tokens (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id     bigint NOT NULL REFERENCES users ON DELETE CASCADE,
        family_id   uuid NOT NULL,
        token_hash  bytea NOT NULL UNIQUE,
        expires_at  timestamptz NOT NULL,
        used_at     timestamptz,
        revoked_at  timestamptz,
        created_at  timestamptz NOT NULL DEFAULT now()
    )
    """)
    # Revoking a family, and checking that an access token's family is still live.
    op.execute("CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)")
    # logout-all; also serves the ON DELETE CASCADE from users.
    op.execute("CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id)")
    op.execute("""
    CREATE TABLE one_time_tokens (
        token_hash  bytea PRIMARY KEY,
        user_id     bigint NOT NULL REFERENCES users ON DELETE CASCADE,
        purpose     text NOT NULL CHECK (purpose IN ('password_reset', 'verify_email')),
        expires_at  timestamptz NOT NULL,
        used_at     timestamptz,
        created_at  timestamptz NOT NULL DEFAULT now()
    )
    """)
    op.execute("CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id)")
    op.execute("""
    CREATE UNLOGGED TABLE rate_limits (
        key           text PRIMARY KEY,
        window_start  timestamptz NOT NULL,
        hits          integer NOT NULL
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE rate_limits")
    op.execute("DROP TABLE one_time_tokens")
    op.execute("DROP TABLE refresh_tokens")
    op.execute("DROP TABLE users")
