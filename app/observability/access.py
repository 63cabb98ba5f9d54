"""Who may call /ops routes: ``OpsAccess``.

A request is let in when it carries ``Authorization: Bearer <OPS_TOKEN>`` (compared in
constant time; for scrapers and scripts). Admin users' access tokens are accepted too once
the auth module registers its checker with ``set_admin_checker``. Anything else gets 401
(no credentials) or 403 (credentials that are not enough). Binding /ops to an internal
network instead is a deployment choice documented in docs/deploy.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

AdminChecker = Callable[[Request, str], Awaitable[bool]]
_admin_checker: AdminChecker | None = None


def set_admin_checker(checker: AdminChecker | None) -> None:
    """Let admin users' bearer tokens through (registered by the auth module)."""
    global _admin_checker
    _admin_checker = checker


async def require_ops_access(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "Bearer token required", headers={"WWW-Authenticate": "Bearer"})
    ops_token = request.app.state.settings.ops_token
    if ops_token is not None and hmac.compare_digest(
        token.encode(), ops_token.get_secret_value().encode()
    ):
        return
    if _admin_checker is not None and await _admin_checker(request, token):
        return
    raise HTTPException(403, "Not allowed")


OpsAccess = Annotated[None, Depends(require_ops_access)]
