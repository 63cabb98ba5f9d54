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
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, ValidationError
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


# These read the Authorization header themselves (``bearer_token``) and the services from
# the app state: see "the bearer scheme in the OpenAPI document" below for why.
async def _current_session(connection: HTTPConnection) -> tuple[User, AccessClaims]:
    services: Services = connection.app.state.services
    return await authenticate(services.auth, bearer_token(connection))


CurrentSession = Annotated[tuple[User, AccessClaims], Depends(_current_session)]


async def _current_user(connection: HTTPConnection) -> User:
    return (await _current_session(connection))[0]  # a call, not another dependency level


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


async def _require_ops_access(connection: HTTPConnection) -> None:
    services: Services = connection.app.state.services
    token = bearer_token(connection)
    if token is None:
        raise HTTPException(401, "Bearer token required", headers=UNAUTHORIZED)
    if not await is_operator(services, token):
        raise HTTPException(403, "Admins only")


OpsAccess = Annotated[None, Depends(_require_ops_access)]


# --- the bearer scheme in the OpenAPI document ---------------------------------------------

# The dependencies above read the Authorization header themselves (``bearer_token``, the one
# place an HTTP route's token is read) rather than through ``Security(HTTPBearer())``, and
# the services from the app state rather than through ``AuthDep``: each dependency level
# is a resolution FastAPI repeats on every request, and on the task list the bearer scheme
# and the auth chain were a quarter of its CPU (docs/benchmarks.md). The document still
# says which operations take a bearer token: ``declare_bearer_scheme`` adds the scheme and
# marks every operation with one of these among its dependencies, however deep.
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An access token from POST /api/auth/login; on /ops routes, OPS_TOKEN too.",
}
BEARER_READERS = frozenset({_current_session, _current_user, _require_ops_access})


def reads_bearer_token(route: APIRoute) -> bool:
    """Whether any dependency of ``route`` reads the bearer token."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.call in BEARER_READERS:
            return True
        pending.extend(dependency.dependencies)
    return False


def declare_bearer_scheme(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Wrap ``app.openapi`` so that the document (``/openapi.json``, /docs) has the bearer
    scheme on every operation of ``routers`` that reads the token."""
    protected = {
        (route.path, method.lower())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and reads_bearer_token(route)
        for method in route.methods or ()
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["HTTPBearer"] = dict(BEARER_SCHEME)
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if (path, method) in protected:
                        operation["security"] = [{"HTTPBearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- query strings validated as one model ----------------------------------------------------

# FastAPI re-derives each declared query parameter's metadata on every request (whether
# its type is a sequence, its aliases, its default): on the task list, four optional
# parameters cost 28 µs of ~170 even when the query string was empty. The busiest routes
# read theirs with one pydantic call instead and document them with the same parameter
# objects FastAPI would write:
#
#     @router.get("/things", openapi_extra=query_parameters(ThingQuery), responses=...422)
#     async def list_things(request: Request, ...) -> ...:
#         query = read_query(ThingQuery, request)
QueryModel = TypeVar("QueryModel", bound=BaseModel)


def read_query(model: type[QueryModel], connection: HTTPConnection) -> QueryModel:
    """``model`` validated from the query string; a 422 like FastAPI's when it does not fit
    (each error's ``loc`` starts with ``"query"``). The last of a repeated key wins."""
    try:
        return model.model_validate(dict(connection.query_params))
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("query", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def query_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents ``model``'s fields as query parameters."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in field.items() if not (k == "default" and v is None)},
        }
        for name, field in schema["properties"].items()
    ]
    return {"parameters": parameters}
