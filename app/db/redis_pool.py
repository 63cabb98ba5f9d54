"""The Redis client of the services: commands wait for a connection instead of failing.

redis-py's asyncio pool (8.x) opens up to ``max_connections`` (100 by default) and then
*raises* ``MaxConnectionsError``: in one process, a burst of more concurrent commands than
that — hundreds of users at a cold start, each request checking its rate limit and reading
the cache — fails two commands in three (300 concurrent readers, docs/benchmarks.md). Its
``BlockingConnectionPool`` waits instead, but costs ~12 µs more per command, waiting or not
(a Condition and a timeout on every acquire; the command itself costs ~45 µs of client CPU).

``WaitingConnectionPool`` is redis-py's pool plus a queue used only when every connection is
in use: a command then waits, first come first served, until one is released — at most
REDIS_POOL_TIMEOUT_SECONDS, then fails with redis's ``ConnectionError`` as if Redis were
away, and the caller's fallback applies (a cache miss, a 503 with Retry-After). The pool's
own bookkeeping decides whether a connection is free; this class never counts connections
itself, so it cannot drift from the pool it extends. Waits are counted in
``redis_pool_waits_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from app.observability.metrics import REDIS_POOL_WAITS

# Connecting and each command's reply: past these Redis counts as away.
SOCKET_TIMEOUT_SECONDS = 5.0


class WaitingConnectionPool(ConnectionPool):
    """``ConnectionPool`` whose ``get_connection`` waits up to ``timeout`` seconds for a
    connection when all ``max_connections`` are in use."""

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        # Arrivals queue behind those already waiting, so a steady stream cannot starve them.
        if not self._waiters and self.can_get_connection():
            with contextlib.suppress(
                MaxConnectionsError
            ):  # taken while the pool's lock was awaited
                return await self._take(*args, **kwargs)
        REDIS_POOL_WAITS.inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        woken_before = False
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            # Woken but beaten to the connection: wait again at the head of the queue.
            (self._waiters.appendleft if woken_before else self._waiters.append)(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # woken just as it gave up: hand the wake-up on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise RedisConnectionError(
                        f"no Redis connection free within {self.timeout:g} s "
                        f"({self.max_connections} in use: REDIS_MAX_CONNECTIONS)"
                    ) from None
                raise
            woken_before = True
            if self.can_get_connection():
                with contextlib.suppress(MaxConnectionsError):
                    return await self._take(*args, **kwargs)

    async def _take(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        """The pool's own acquire: a free connection, or a new one below the limit."""
        taken = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        return cast(AbstractConnection, taken)

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def open_redis(url: str, *, max_connections: int, timeout: float) -> Redis:
    """A client of ``url`` on a ``WaitingConnectionPool``; ``aclose()`` closes the pool."""
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    return Redis.from_pool(pool)
