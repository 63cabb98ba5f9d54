"""Read-your-writes across requests: the client carries the primary's WAL position.

Installed by ``create_app`` when DATABASE_REPLICA_URLS is set (without replicas every read
is on the primary and there is nothing to track). Per HTTP request:

1. The position the client last wrote at is read from the ``pgfirst_lsn`` cookie or the
   ``X-Read-After`` header (same signed token; the header is for clients without a cookie
   jar). Its reads go to a replica only once that replica has replayed this far.
2. POST, PUT, PATCH and DELETE read from the primary throughout, and so does the rest of
   any request after a ``db.transaction()`` commits: a read that feeds a write, or follows
   it, must not see the past.
3. When the request committed, or was an unsafe method that succeeded, the response carries
   the primary's WAL insert position (one ``SELECT pg_current_wal_insert_lsn()``) as a new
   token, in the cookie and the ``X-Read-After`` header.

Why the client and not the cache: the token costs reads nothing (no lookup before choosing
a server, no shared store between instances), and Rails/GitLab-style stickiness is per
session anyway. The price: it follows the client, not the account — another device of the
same user may read from a replica that has not replayed the write yet, for as long as the
replica lags (bounded by DATABASE_REPLICA_MAX_LAG_SECONDS).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.routing import (
    TOKEN_SECONDS,
    RequestRouting,
    read_position,
    routing_scope,
    sign_position,
)

log = logging.getLogger(__name__)

COOKIE = "pgfirst_lsn"
HEADER = "x-read-after"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadYourWritesMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Any = getattr(scope["app"].state, "services", None) if "app" in scope else None
        if scope["type"] != "http" or services is None or services.db.replicas is None:
            await self.app(scope, receive, send)
            return
        db = services.db
        secret: str = services.settings.secret_key.get_secret_value()
        token = _incoming_token(scope)
        unsafe = scope["method"] not in SAFE_METHODS
        state = RequestRouting(
            min_lsn=read_position(secret, token) if token else None, primary_only=unsafe
        )
        https = scope.get("scheme") == "https"

        async def send_position(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                state.committed or (unsafe and message["status"] < 400)
            ):
                try:
                    position = sign_position(secret, await db.wal_position())
                except Exception:
                    # The write is done; without a token only its read-your-writes is lost.
                    log.warning("could not read the WAL position", exc_info=True)
                else:
                    headers = MutableHeaders(scope=message)
                    headers[HEADER] = position
                    cookie = f"{COOKIE}={position}; Max-Age={TOKEN_SECONDS}; Path=/; HttpOnly"
                    headers.append(
                        "set-cookie", cookie + "; SameSite=Lax" + ("; Secure" if https else "")
                    )
            await send(message)

        with routing_scope(state):
            await self.app(scope, receive, send_position)


def _incoming_token(scope: Scope) -> str | None:
    header: str | None = None
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == b"x-read-after":
            header = value.decode("latin-1")
        elif name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, cookie_value = part.strip().partition("=")
                if key == COOKIE:
                    return cookie_value
    return header
