"""One pure-ASGI middleware around every HTTP request.

It gives each request an id (a sane incoming ``X-Request-ID`` is kept, else a new one),
puts it in the logging context and the response, enforces the body size limit, adds
security headers, records metrics by route *template* (``/api/tasks/{task_id}``, never the
raw path, so label cardinality stays bounded), writes one access-log line, and turns an
unhandled exception into the JSON 500 shape — or, when a backing service is away
(``unavailable.py``), into a 503 with Retry-After. Pure ASGI rather than BaseHTTPMiddleware:
streaming responses (SSE) pass through untouched and there is no extra task per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
from time import perf_counter
from typing import Any

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.errors import RequestBodyTooLarge, RequestBodyTooSlow
from app.observability.logging import request_id_var
from app.observability.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS
from app.observability.unavailable import RETRY_AFTER_SECONDS, is_unavailable

log = logging.getLogger("app.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
)
_HSTS = "max-age=63072000; includeSubDomains"


def _new_id_source() -> tuple[str, itertools.count[int]]:
    return secrets.token_hex(8), itertools.count(1)


# Request ids: 32 hex digits, a random prefix per process and a counter — unique like a
# uuid4 without reading the OS's random source on every request. A forked child draws a
# prefix of its own.
_id_prefix, _id_counter = _new_id_source()


def _renew_id_source() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = _new_id_source()


os.register_at_fork(after_in_child=_renew_id_source)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):016x}"


# (method, route, status) -> its children of the two request metrics. ``labels()`` takes a
# lock and builds its key on every call, a few microseconds a request; the set of routes
# and statuses is small and fixed, so each child is looked up once.
_metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _observe(method: str, route: str, status: int, elapsed: float) -> None:
    children = _metric_children.get((method, route, status))
    if children is None:
        children = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_REQUEST_SECONDS.labels(method, route),
        )
        _metric_children[(method, route, status)] = children
    children[0].inc()
    children[1].observe(elapsed)


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or new_request_id()
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id)
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = perf_counter()
        status = 500
        response_started = False
        limit = self.max_body_bytes
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in _SECURITY_HEADERS:
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("strict-transport-security", _HSTS)
            await send(message)

        received = 0
        body_done = False
        # The whole body must arrive within the timeout (slow-loris bodies); later receives
        # (a stream waiting for the client to leave) are not timed.
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def receive_bounded() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestBodyTooSlow(self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestBodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        try:
            if _declared_length(scope) > limit:
                raise RequestBodyTooLarge(limit)
            await self.app(scope, receive_bounded, send_with_headers)
        except (RequestBodyTooLarge, RequestBodyTooSlow) as exc:
            if response_started:
                raise
            await _send_json(send_with_headers, exc.status_code, {"detail": exc.detail})
        except Exception as exc:
            if response_started:
                log.exception("unhandled error", extra={"path": scope.get("path")})
                raise
            if is_unavailable(exc):
                log.warning(
                    "service unavailable: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"path": scope.get("path")},
                )
                body = {"detail": "Service temporarily unavailable", "request_id": request_id}
                retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
                await _send_json(send_with_headers, 503, body, retry)
                return
            log.exception("unhandled error", extra={"path": scope.get("path")})
            body = {"detail": "Internal Server Error", "request_id": request_id}
            await _send_json(send_with_headers, 500, body)
        finally:
            elapsed = perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "GET")
            _observe(method, route, status, elapsed)
            path = scope.get("path", "")
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "%s %s %s",
                    method,
                    path,
                    status,
                    extra={
                        "method": method,
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _REQUEST_ID.match(candidate) else None
    return None


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


async def _send_json(
    send: Send, status: int, body: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(extra or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
