"""Database access: pools, transactions, read routing, migrations, the embedded server.

One ``Database`` per process. Inside the app the lifespan opens it and registers it here;
a plain script (cron, ``python -c``) gets one opened lazily from Settings on first use:

    from app.db import get_database
    db = await get_database()
    async with db.transaction() as conn:
        ...
"""

from __future__ import annotations

import asyncio

from app.config import get_settings
from app.db.pool import Connection, Database, PoolStats, Record

__all__ = [
    "Connection",
    "Database",
    "PoolStats",
    "Record",
    "close_database",
    "get_database",
    "set_database",
]

_current: Database | None = None
_opening = asyncio.Lock()


def set_database(db: Database | None) -> None:
    """Register the process's Database (the app lifespan does this)."""
    global _current
    _current = db


async def get_database() -> Database:
    """The registered Database, or one opened from Settings for a plain script."""
    global _current
    if _current is not None:
        return _current
    async with _opening:
        if _current is None:
            _current = await Database.connect(get_settings())
    return _current


async def close_database() -> None:
    """Close and forget the registered Database (end of a script)."""
    global _current
    if _current is not None:
        db, _current = _current, None
        await db.close()
