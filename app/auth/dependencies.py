"""FastAPI dependencies: ``CurrentUser``, ``CurrentSession``, ``AdminUser``, ``AuthDep``.

A request is authenticated by ``Authorization: Bearer <access token>``: the signature and
expiry are checked in memory, then the user and whether the session still stands (no
logout, logout-all, password change since) come from the cache, or from one query on a
miss (``Auth.user_for_token``). 401 otherwise, with ``WWW-Authenticate: Bearer``.
No pooled connection is held for authentication itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.auth.service import Auth, User
from app.auth.tokens import AccessClaims, InvalidToken, read_access_token

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def get_auth(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


AuthDep = Annotated[Auth, Depends(get_auth)]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(auth: Auth, token: str | None) -> tuple[User, AccessClaims]:
    if token is None:
        raise HTTPException(401, "Not authenticated", headers=UNAUTHORIZED)
    try:
        claims = read_access_token(auth.secret, token)
    except InvalidToken:
        raise HTTPException(401, "Invalid or expired token", headers=UNAUTHORIZED) from None
    user = await auth.user_for_token(claims.user_id, claims.family_id, claims.issued_at)
    if user is None:
        raise HTTPException(401, "Session ended", headers=UNAUTHORIZED)
    return user, claims


async def _current_session(request: Request, auth: AuthDep) -> tuple[User, AccessClaims]:
    return await authenticate(auth, bearer_token(request))


CurrentSession = Annotated[tuple[User, AccessClaims], Depends(_current_session)]


async def _current_user(session: CurrentSession) -> User:
    return session[0]


CurrentUser = Annotated[User, Depends(_current_user)]


async def _admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(403, "Admins only")
    return user


AdminUser = Annotated[User, Depends(_admin_user)]
