"""The typed dependencies routes declare: what a route needs, taken from the open services.

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: int, user: CurrentUser, conn: DbConn) -> Thing: ...

Everything comes from ``app.state.services`` (set by the lifespan of ``create_app``), so a
route never reaches a resource any other way. ``DbConn`` holds one pooled primary
connection for the request; ``ReadConn`` one from a healthy replica when
DATABASE_REPLICA_URLS is set (lag-tolerant reads only) — unless the client's last write has
not been replayed there yet or the request writes (POST/PUT/PATCH/DELETE): the primary
then (docs/replicas.md).

Authentication: ``Authorization: Bearer <access token>``; the signature and expiry are
checked in memory, then the user and whether the session still stands (no logout,
logout-all, password change since) come from the cache, or one query on a miss
(``Auth.user_for_token``). 401 otherwise, with ``WWW-Authenticate: Bearer``.

``OpsAccess`` lets in ``Authorization: Bearer <OPS_TOKEN>`` (compared in constant time; for
scrapers and scripts) or an admin user's access token (the first admin is made with
``app users create-admin EMAIL``). No credentials: 401; not enough: 403.

Every dependency here is a coroutine, even the ones that only read an attribute: FastAPI
runs a plain ``def`` dependency in the thread pool, a hop that cost the task list a third
of its throughput.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from app.auth.ratelimit import RateLimiter
from app.auth.service import Auth, User
from app.auth.tokens import AccessClaims, InvalidToken, read_access_token
from app.cache import Cache
from app.config import Settings
from app.db import Connection, Database
from app.jobs import Jobs
from app.pubsub import Broker
from app.services import Services

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def get_services(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def _settings(services: ServicesDep) -> Settings:
    return services.settings


async def _database(services: ServicesDep) -> Database:
    return services.db


async def _auth(services: ServicesDep) -> Auth:
    return services.auth


async def _cache(services: ServicesDep) -> Cache:
    return services.cache


async def _broker(services: ServicesDep) -> Broker:
    return services.broker


async def _jobs(services: ServicesDep) -> Jobs:
    return services.jobs


async def _rate_limiter(services: ServicesDep) -> RateLimiter:
    return services.rate_limiter


SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Database, Depends(_database)]
AuthDep = Annotated[Auth, Depends(_auth)]
CacheDep = Annotated[Cache, Depends(_cache)]
BrokerDep = Annotated[Broker, Depends(_broker)]
JobsDep = Annotated[Jobs, Depends(_jobs)]
RateLimiterDep = Annotated[RateLimiter, Depends(_rate_limiter)]


async def _primary_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    async with db.acquire() as conn:
        yield conn


async def _read_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    async with db.acquire(read=True) as conn:
        yield conn


DbConn = Annotated[Connection, Depends(_primary_connection)]
ReadConn = Annotated[Connection, Depends(_read_connection)]


# --- authentication ------------------------------------------------------------------------


def bearer_token(connection: HTTPConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
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


# Declared as a security scheme so that the OpenAPI document says how to authenticate and
# /docs can authorise; the header is read here and nowhere else for HTTP routes.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An access token from POST /api/auth/login; on /ops routes, OPS_TOKEN too.",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if credentials is None:
        return None
    return credentials.credentials.strip() or None


# Both read the services from the app state themselves instead of through AuthDep: every
# dependency level costs FastAPI a resolution per request, and the user is resolved on
# nearly every request (the task list spent a fifth of its CPU resolving this chain).
async def _current_session(
    connection: HTTPConnection, credentials: BearerCredentials
) -> tuple[User, AccessClaims]:
    services: Services = connection.app.state.services
    return await authenticate(services.auth, _token(credentials))


CurrentSession = Annotated[tuple[User, AccessClaims], Depends(_current_session)]


async def _current_user(connection: HTTPConnection, credentials: BearerCredentials) -> User:
    services: Services = connection.app.state.services
    return (await authenticate(services.auth, _token(credentials)))[0]


CurrentUser = Annotated[User, Depends(_current_user)]


async def _admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(403, "Admins only")
    return user


AdminUser = Annotated[User, Depends(_admin_user)]


async def is_operator(services: Services, token: str | None) -> bool:
    """Whether ``token`` is OPS_TOKEN or an admin's access token."""
    if token is None:
        return False
    ops_token = services.settings.ops_token
    if ops_token is not None and hmac.compare_digest(
        token.encode(), ops_token.get_secret_value().encode()
    ):
        return True
    try:
        user, _ = await authenticate(services.auth, token)
    except HTTPException:
        return False
    return user.is_admin


async def _require_ops_access(services: ServicesDep, credentials: BearerCredentials) -> None:
    token = _token(credentials)
    if token is None:
        raise HTTPException(401, "Bearer token required", headers=UNAUTHORIZED)
    if not await is_operator(services, token):
        raise HTTPException(403, "Admins only")


OpsAccess = Annotated[None, Depends(_require_ops_access)]
