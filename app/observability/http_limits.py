"""uvicorn's httptools protocol with the two limits it lacks: how large a request head may
be and how long a client may take to send it.

Out of the box uvicorn (httptools) reads a request head of any size — 16 MB of headers
were read and answered 200 — and waits for it forever, so one client can hold memory, or a
connection with a few bytes a second (slow-loris), as long as it likes. Here the bytes of a
head are counted as they arrive: past MAX_REQUEST_HEAD_BYTES (URL and headers, 64 KiB by
default) the connection gets 431 and is closed; a head not complete within
REQUEST_HEAD_TIMEOUT_SECONDS of the connection opening (or of the previous response) gets
408 and is closed. Both answers are JSON like every other error. Slow *bodies* are the
request middleware's to cut off (REQUEST_BODY_TIMEOUT_SECONDS, middleware.py).
"""

from __future__ import annotations

import asyncio
import functools

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, load_settings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """The limits come from the settings of the process it runs in (read once), so that
    uvicorn can hand the class by reference to reload and worker processes; a server in
    this process with other settings uses ``limited_protocol(settings)``."""

    limits: tuple[int, float] | None = None  # (head bytes, head seconds); None: settings

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.max_head_bytes, self.head_timeout = self.limits or _process_limits()
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        # Counted after parsing: a chunk that ends the head may carry body bytes too.
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"Request head over {self.max_head_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_head = True  # the next request's head, if the connection stays open
        self._head_bytes = 0
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and self._head_bytes > 0:
            self._refuse(408, f"Request head not received within {self.head_timeout:g} s")
        elif self._in_head:
            self.transport.close()  # opened and silent: nothing to answer

    def _refuse(self, status: int, detail: str) -> None:
        if self.transport.is_closing():
            return
        body = orjson.dumps({"detail": detail})
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, _REASONS[status])
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


@functools.cache
def _process_limits() -> tuple[int, float]:
    settings = load_settings()
    return settings.max_request_head_bytes, settings.request_head_timeout_seconds


def limited_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with ``settings``' limits, for a server run in this process (a
    class made here cannot be sent to another process: ``app serve`` passes
    ``LimitedHttpToolsProtocol`` itself)."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": (settings.max_request_head_bytes, settings.request_head_timeout_seconds)},
    )
