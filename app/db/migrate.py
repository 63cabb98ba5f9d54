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
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.config import PROJECT_ROOT, Settings, load_settings
from app.db.pool import Connection
from app.observability.logging import configure_logging

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def alembic_config(dsn: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dsn"] = dsn
    # Read by env.py: logging is ours to set up (see the module docstring).
    config.attributes["configure_logger"] = False
    return config


def upgrade(dsn: str, revision: str = "head", settings: Settings | None = None) -> None:
    """Blocking; run it before the loop starts or via ``asyncio.to_thread``."""
    _log_through_app(settings)
    command.upgrade(alembic_config(dsn), revision)


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
