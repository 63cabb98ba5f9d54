"""/ops (HTML) and /ops/signals (JSON): the advisor's report, for operators only.

Access: ``Authorization: Bearer <OPS_TOKEN or an admin's access token>`` on both; a
browser, which cannot send that header on a plain visit, gets in with a one-time link:

1. ``POST /ops/links`` (bearer) returns ``/ops/enter?code=...``, usable once within
   OPS_LINK_SECONDS (the code's hash is a cache key; entering deletes it, and only the
   request whose delete removed it gets in);
2. ``GET /ops/enter?code=...`` sets ``pgfirst_ops``: an HttpOnly, SameSite=Strict cookie
   scoped to /ops (Secure over https) holding an expiry signed with SECRET_KEY — never the
   token itself — valid OPS_SESSION_SECONDS; it redirects to /ops.

The code travels in a URL once, and is dead after its first use or a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.deps import ServicesDep, bearer_token, is_operator
from app.observability.errors import error_responses
from app.services import Services
from app.signals import history
from app.signals.advisor import measure
from app.signals.page import render

router = APIRouter(prefix="/ops", tags=["ops"])
COOKIE = "pgfirst_ops"
OPS_LINK_SECONDS = 60
OPS_SESSION_SECONDS = 3600
PAGE_HOURS = 3.0
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
    "cache-control": "no-store",
}
Since = Annotated[
    float | None,
    Query(gt=0, le=30 * 86400, description="Seconds of recorded samples to summarise."),
]


def _sign(secret: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"ops:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def _valid_cookie(services: Services, value: str | None) -> bool:
    if not value or "." not in value:
        return False
    expires, _, _ = value.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    expected = _sign(services.settings.secret_key.get_secret_value(), int(expires))
    return hmac.compare_digest(value.encode(), expected.encode())


async def _operator(services: Services, request: Request) -> None:
    if _valid_cookie(services, request.cookies.get(COOKIE)):
        return
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "Bearer token or an /ops link required")
    if not await is_operator(services, token):
        raise HTTPException(403, "Admins only")


@router.get("/signals", responses=error_responses(401, 403))
async def get_signals(services: ServicesDep, request: Request, since: Since = None) -> Any:
    """The advisor's report (docs/signals.md); ``since`` adds each key's recorded history."""
    await _operator(services, request)
    document = (await measure(services.db, services.settings)).document()
    if since is not None:
        async with services.db.acquire() as conn:
            document["history"] = await history.summary(conn, since)
    return document


@router.get("", response_class=HTMLResponse, responses=error_responses(401, 403))
async def get_ops_page(services: ServicesDep, request: Request) -> HTMLResponse:
    try:
        await _operator(services, request)
    except HTTPException as exc:
        body = (
            "<!doctype html><title>pgfirst ops</title><p>Operators only. Get a one-time "
            "link: <code>app signals --link</code>, or POST /ops/links with OPS_TOKEN.</p>"
        )
        return HTMLResponse(body, status_code=exc.status_code, headers=PAGE_HEADERS)
    report = await measure(services.db, services.settings)
    async with services.db.acquire() as conn:
        series = await history.series(conn, PAGE_HOURS * 3600)
    return HTMLResponse(render(report, series, PAGE_HOURS), headers=PAGE_HEADERS)


@router.post("/links", status_code=201, responses=error_responses(401, 403))
async def post_ops_link(services: ServicesDep, request: Request) -> dict[str, Any]:
    """A one-time link into /ops for a browser."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "Bearer token required")
    if not await is_operator(services, token):
        raise HTTPException(403, "Admins only")
    return {"path": await create_link(services), "expires_in": OPS_LINK_SECONDS}


async def create_link(services: Services) -> str:
    code = secrets.token_urlsafe(32)
    await services.cache.set(_link_key(code), 1, ttl=OPS_LINK_SECONDS)
    return f"/ops/enter?code={code}"


@router.get("/enter", responses=error_responses(403))
async def get_ops_enter(
    services: ServicesDep, request: Request, code: Annotated[str, Query(max_length=100)]
) -> RedirectResponse:
    if await services.cache.delete(_link_key(code)) != 1:
        raise HTTPException(403, "This link was used or has expired")
    expires = int(time.time()) + OPS_SESSION_SECONDS
    response = RedirectResponse("/ops", status_code=303)
    response.set_cookie(
        COOKIE,
        _sign(services.settings.secret_key.get_secret_value(), expires),
        max_age=OPS_SESSION_SECONDS,
        path="/ops",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _link_key(code: str) -> str:
    return "ops-link:" + hashlib.sha256(code.encode()).hexdigest()
