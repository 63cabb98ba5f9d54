"""Readiness: the database answers within READINESS_TIMEOUT and its schema is at the
migrations head this code expects (served at /readyz by app/observability/router.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.db import Database
from app.db.migrate import current_revision, head_revision


async def check_readiness(db: Database) -> tuple[dict[str, Any], bool]:
    expected = head_revision()
    try:
        async with asyncio.timeout(db.settings.readiness_timeout):
            async with db.acquire() as conn:
                current = await current_revision(conn)
    except (OSError, TimeoutError) as exc:
        return {"database": f"unreachable: {type(exc).__name__}"}, False
    except Exception as exc:  # asyncpg raises its own hierarchy for server-side failures
        return {"database": f"error: {type(exc).__name__}"}, False
    checks: dict[str, Any] = {
        "database": "ok",
        "migrations": {"current": current, "head": expected},
    }
    for stats in db.stats():
        checks.setdefault("pools", {})[stats.role] = {"size": stats.size, "in_use": stats.in_use}
    return checks, current == expected
