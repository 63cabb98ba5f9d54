"""Alembic, driven from code: upgrade, downgrade, and what "at head" means for /readyz.

Revisions live in ``migrations/versions`` and are explicit SQL (``op.execute``). They run
in one transaction under an advisory lock, so two instances migrating at once (a release
command racing a developer) take turns instead of failing half-way.

Alembic's own log lines ("Running upgrade a -> b") go through the project's logging
(app/observability/logging.py), so with LOG_FORMAT=json a release command's output is JSON
lines like the rest. ``upgrade``/``downgrade`` install that setup when given Settings, or
when nothing has configured logging yet (``app migrate``); env.py then leaves logging
alone instead of applying alembic.ini's format, which only the plain alembic CLI uses.
The alembic loggers follow LOG_LEVEL: at the default (INFO) every applied revision shows.

Before alembic runs, ``upgrade`` checks what the migrations need from the server and
stops with one line saying what is missing (``DatabasePrerequisiteError``): the
extensions vector, pg_trgm and btree_gin offered by the server (pg_available_extensions)
and either created already or creatable by this role, and, while revisions are pending,
the right to create tables in schema ``public``. Whether the role may create an extension
is found by trying, in a transaction that is rolled back: hosts grant it in their own ways
(a superuser, PostgreSQL's trusted extensions, RDS's rds_superuser, Supabase's supautils),
and only CREATE EXTENSION itself knows them all.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.config import PROJECT_ROOT, Settings, SettingsError, load_settings
from app.db.pool import Connection
from app.observability.logging import configure_logging

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"

# Extension → where a server gets it, for the message when it does not offer it.
REQUIRED_EXTENSIONS: dict[str, str] = {
    "vector": "pgvector; managed hosts list it among their extensions",
    "pg_trgm": "PostgreSQL contrib",
    "btree_gin": "PostgreSQL contrib",
}


class DatabasePrerequisiteError(SettingsError):
    """The database at DATABASE_URL cannot take the migrations; the message says why."""


def alembic_config(dsn: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dsn"] = dsn
    # Read by env.py: logging is ours to set up (see the module docstring).
    config.attributes["configure_logger"] = False
    return config


# The key migrations/env.py holds while migrating (pg_advisory_xact_lock): "pgfirst".
MIGRATION_LOCK_KEY = 0x70676669727374


def upgrade(dsn: str, revision: str = "head", settings: Settings | None = None) -> None:
    """Blocking; run it before the loop starts or via ``asyncio.to_thread``."""
    check_prerequisites(dsn)
    _log_through_app(settings)
    command.upgrade(alembic_config(dsn), revision)


def check_prerequisites(dsn: str, extensions: dict[str, str] = REQUIRED_EXTENSIONS) -> None:
    """Raise DatabasePrerequisiteError naming everything the migrations would fail on."""
    problems = asyncio.run(_missing_prerequisites(dsn, extensions))
    if problems:
        raise DatabasePrerequisiteError(
            "the database cannot take the migrations: " + "; ".join(problems)
        )


async def _missing_prerequisites(dsn: str, extensions: dict[str, str]) -> list[str]:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return [f"cannot connect to DATABASE_URL ({exc})"]
    try:
        role = await conn.fetchval("SELECT current_user")
        database = await conn.fetchval("SELECT current_database()")
        offered = {
            row["name"]: row["installed_version"] is not None
            for row in await conn.fetch(
                "SELECT name, installed_version FROM pg_available_extensions"
                " WHERE name = ANY($1::text[])",
                list(extensions),
            )
        }
        problems: list[str] = []
        for name, origin in extensions.items():
            if name not in offered:
                problems.append(f"the server does not offer extension {name} ({origin})")
            elif not offered[name]:
                refusal = await _create_refused(conn, name)
                if refusal is not None:
                    problems.append(
                        f"role {role} may not create extension {name} ({refusal}): run "
                        f'CREATE EXTENSION {name}; as an administrator in database "{database}"'
                    )
        behind = await current_revision(conn) != head_revision()
        may_create = await conn.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
        if behind and not may_create:
            problems.append(
                f"role {role} may not create tables in schema public: "
                f"GRANT CREATE ON SCHEMA public TO {role}"
            )
        return problems
    finally:
        await conn.close()


async def _create_refused(conn: Connection, extension: str) -> str | None:
    """Why this role may not create ``extension`` (None: it may), leaving nothing behind.

    The try takes the migrations' advisory lock first: another process migrating or
    checking at the same moment would otherwise make this CREATE collide with its own.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
    except asyncpg.UniqueViolationError:
        return None  # created by someone else meanwhile: it exists, which is what counts
    except asyncpg.PostgresError as exc:
        return str(exc).splitlines()[0]
    finally:
        await transaction.rollback()
    return None


def downgrade(dsn: str, revision: str, settings: Settings | None = None) -> None:
    _log_through_app(settings)
    command.downgrade(alembic_config(dsn), revision)


@lru_cache(maxsize=1)
def head_revision(migrations_dir: Path = MIGRATIONS_DIR) -> str | None:
    """The revision the code expects (read from the files once)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return ScriptDirectory.from_config(config).get_current_head()


def _log_through_app(settings: Settings | None) -> None:
    # A process that already has handlers (the app, a worker, pytest's capture) keeps them;
    # one that has none would otherwise print nothing, or alembic.ini's format.
    if settings is not None or not logging.getLogger().handlers:
        configure_logging(settings or load_settings())
    alembic = logging.getLogger("alembic")
    # NOTSET: follow the root level (LOG_LEVEL) rather than a level set by an earlier
    # fileConfig in this process; propagate to the root handler, which formats the line.
    alembic.setLevel(logging.NOTSET)
    alembic.propagate = True


async def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None before the first migration."""
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    if not exists:
        return None
    value: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return value
