"""/healthz, /readyz and /metrics.

- ``/healthz``: the process serves requests. No database call — a platform health check
  that failed on a database blip would restart healthy machines.
- ``/readyz``: the database answers within READINESS_TIMEOUT, its schema is at the
  migrations head this code expects, and every component the lifespan registered in
  ``app.state.health_checks`` (the pub/sub listener...) is healthy; 503 with the reason
  otherwise.
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.db import Database
from app.db.migrate import current_revision, head_revision

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def get_health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; the body says why."}})
async def get_readiness(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    checks, ready = await check_readiness(db)
    # Components started by the lifespan (pub/sub listener, ...) report their own state.
    for name, component_health in request.app.state.health_checks.items():
        state, healthy = component_health()
        checks[name] = state
        ready = ready and healthy
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def get_metrics() -> Response:
    body = await asyncio.to_thread(generate_latest)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


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
