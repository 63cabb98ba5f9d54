"""Alembic, driven from code: upgrade, downgrade, and what "at head" means for /readyz.

Revisions live in ``migrations/versions`` and are explicit SQL (``op.execute``). They run
in one transaction under an advisory lock, so two instances migrating at once (a release
command racing a developer) take turns instead of failing half-way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.config import PROJECT_ROOT
from app.db.pool import Connection

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def alembic_config(dsn: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dsn"] = dsn
    return config


def upgrade(dsn: str, revision: str = "head") -> None:
    """Blocking; run it before the loop starts or via ``asyncio.to_thread``."""
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)


@lru_cache(maxsize=1)
def head_revision(migrations_dir: Path = MIGRATIONS_DIR) -> str | None:
    """The revision the code expects (read from the files once)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return ScriptDirectory.from_config(config).get_current_head()


async def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None before the first migration."""
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    if not exists:
        return None
    value: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return value
