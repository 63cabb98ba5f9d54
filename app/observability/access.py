"""Who may call /ops routes: ``OpsAccess``.

Let in: ``Authorization: Bearer <OPS_TOKEN>`` (compared in constant time; for scrapers
and scripts), or the access token of an admin user (``users.is_admin``; the first admin
is made with ``app users create-admin EMAIL``). No credentials: 401; credentials that are
not enough: 403. Binding /ops to an internal network instead is a deployment choice.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.auth.dependencies import authenticate, bearer_token


async def require_ops_access(request: Request) -> None:
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "Bearer token required", headers={"WWW-Authenticate": "Bearer"})
    ops_token = request.app.state.settings.ops_token
    if ops_token is not None and hmac.compare_digest(
        token.encode(), ops_token.get_secret_value().encode()
    ):
        return
    try:
        user, _ = await authenticate(request.app.state.auth, token)
    except HTTPException:
        raise HTTPException(403, "Not allowed") from None
    if not user.is_admin:
        raise HTTPException(403, "Admins only")


OpsAccess = Annotated[None, Depends(require_ops_access)]
