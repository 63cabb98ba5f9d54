"""Alembic environment: asyncpg under SQLAlchemy, one transaction, one advisory lock.

The DSN comes from ``config.attributes["dsn"]`` (app/db/migrate.py) or, for the plain
alembic CLI, from Settings: DATABASE_DIRECT_URL, DATABASE_URL, else the embedded server.
Logging is alembic.ini's only for the plain alembic CLI; app/db/migrate.py sets
``config.attributes["configure_logger"] = False`` and logs through the app's handler.
"""

from __future__ import annotations

import asyncio
import logging
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.db.migrate import MIGRATION_LOCK_KEY

config = context.config


def _dsn() -> str:
    dsn = config.attributes.get("dsn")
    if dsn:
        return str(dsn)
    from app.config import load_settings
    from app.db.urls import resolve_database_url

    settings = load_settings()
    return settings.database_direct_url or resolve_database_url(settings)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        # Serialise concurrent migrators; released at COMMIT.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # Fail fast rather than queue behind a long transaction while holding locks
        # that would block every other query on the table.
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        context.run_migrations()


async def _run_online() -> None:
    dsn = _dsn()
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(dsn),
        poolclass=NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url="postgresql://", literal_binds=True, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
else:
    # `app migrate` logs through the app's own setup (app/db/migrate.py says so with
    # configure_logger=False); alembic.ini's format is for the plain alembic CLI only.
    if (
        config.attributes.get("configure_logger", True)
        and config.config_file_name
        and not logging.getLogger().handlers
    ):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(_run_online())
