"""/healthz, /readyz and /metrics.

- ``/healthz``: the process serves requests. No database call — a platform health check
  that failed on a database blip would restart healthy machines.
- ``/readyz``: the database answers within READINESS_TIMEOUT, its schema is at the
  migrations head this code expects, and every component of the services (notifier,
  pub/sub, cache) is healthy; 503 otherwise. Anyone may ask whether the process is ready;
  only an operator (OPS_TOKEN or an admin's token) sees why — migration revisions and pool
  sizes are not for the public.
- ``/metrics``: Prometheus text format; with METRICS_PUBLIC off (the production default)
  only for an operator — a scraper sends OPS_TOKEN as its bearer token. Route names, pool
  sizes and job queues tell an attacker what to aim at.
- ``/openapi.json`` for an operator, mounted by create_app when API_DOCS_PUBLIC is off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.db.readiness import check_readiness
from app.deps import ServicesDep, bearer_token, is_operator
from app.services import Services

router = APIRouter(tags=["ops"])
private_openapi_router = APIRouter()


@router.get("/healthz")
async def get_health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready; an operator's token shows why."}},
)
async def get_readiness(request: Request, services: ServicesDep) -> JSONResponse:
    checks, ready = await check_readiness(services.db)
    for name, component_health in services.health_checks().items():
        state, healthy = component_health()
        checks[name] = state
        ready = ready and healthy
    body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if await is_operator(services, bearer_token(request)):
        body["checks"] = checks
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def get_metrics(request: Request, services: ServicesDep) -> Response:
    if not services.settings.metrics_public:
        await _require_operator(request, services)
    body = await asyncio.to_thread(generate_latest)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@private_openapi_router.get("/openapi.json", include_in_schema=False)
async def get_private_openapi(request: Request, services: ServicesDep) -> JSONResponse:
    await _require_operator(request, services)
    return JSONResponse(request.app.openapi())


async def _require_operator(request: Request, services: Services) -> None:
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "Bearer token required", headers={"WWW-Authenticate": "Bearer"})
    if not await is_operator(services, token):
        raise HTTPException(403, "Operators only")
