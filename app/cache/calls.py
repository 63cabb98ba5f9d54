"""Every backend call of the cache, under one policy: failure is a miss.

Each call runs under CACHE_TIMEOUT_SECONDS. An error from the backend (BACKEND_ERRORS) or a
timeout returns the caller's fallback instead — counted per operation in ``errors`` (for
``cache_errors_total``) and logged at most once per 10 s — so a request carries on without
the cache. Any other exception (a bug, a ValueError the backend raised on purpose) goes up.
A stopped cache answers every call with the fallback.

``failing`` says whether the latest call failed: callers use it to skip work that only
helps a cache that answers (coordination, storing what they loaded), so that an
overloaded backend is not sent more calls that will time out in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.cache.backend import BACKEND_ERRORS, CacheBackend, CacheClosedError
from app.cache.local import Clock

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_SECONDS = 10.0


class BackendCalls:
    def __init__(self, timeout: float, clock: Clock) -> None:
        self.backend: CacheBackend | None = None  # set while the cache runs
        self.errors: dict[str, int] = {}
        self.failing = False
        self._timeout = timeout
        self._clock = clock
        self._last_error_log = float("-inf")

    def ready(self) -> CacheBackend:
        """The running backend; CacheClosedError once the cache is stopped."""
        if self.backend is None:
            raise CacheClosedError("the cache is not running")
        return self.backend

    async def run(
        self, operation: str, use: Callable[[CacheBackend], Awaitable[Any]], fallback: Any
    ) -> Any:
        """``await use(backend)`` under CACHE_TIMEOUT_SECONDS; failure → ``fallback``."""
        backend = self.backend
        if backend is None:
            return fallback
        try:
            async with asyncio.timeout(self._timeout):
                result = await use(backend)
        except BACKEND_ERRORS as exc:
            self.failing = True
            self.errors[operation] = self.errors.get(operation, 0) + 1
            now = self._clock()
            if now - self._last_error_log > ERROR_LOG_INTERVAL_SECONDS:
                self._last_error_log = now
                log.warning("cache %s failed, treated as a miss: %r", operation, exc)
            return fallback
        self.failing = False
        return result
