"""A fixed set of connections for the cache's hot path, without a pool's bookkeeping.

asyncpg's pool costs about 15 µs per query on this machine (acquire with its timeout
handling, the holder, the reset on release) — a quarter of a cache read. The cache's
statements are single round trips that never change session state, so a free list is
enough: take an idle connection (or open one, up to ``size``, or wait for one), run the
statement, give it back.

A connection whose statement failed with anything but a server error (a timeout that
cancelled it, a dropped socket) is terminated, never reused: its protocol state is
unknown. A waiter whose connection was discarded gets a new one opened for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]


class ConnectionSet:
    def __init__(self, connect: Connect, size: int) -> None:
        self._connect = connect
        self.size = size
        self._idle: list[asyncpg.Connection[Any]] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection[Any]]] = deque()
        self._open = 0
        self._closed = False

    async def start(self) -> None:
        self._open += 1
        try:
            self._idle.append(await self._connect())
        except BaseException:
            self._open -= 1
            raise

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.close() for conn in idle), return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("cache connections closed"))

    @property
    def in_use(self) -> int:
        return self._open - len(self._idle)

    def saturated(self) -> bool:
        """True when a statement would have to wait for a connection."""
        return not self._idle and self._open >= self.size

    # --- handing out ---------------------------------------------------------------------

    async def _take(self) -> asyncpg.Connection[Any]:
        if self._closed:
            raise asyncpg.InterfaceError("cache connections closed")
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._open -= 1  # ended by the server while idle
        if self._open < self.size:
            self._open += 1
            try:
                return await self._connect()
            except BaseException:
                self._open -= 1
                raise
        waiter: asyncio.Future[asyncpg.Connection[Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as we were cancelled
            else:
                self._drop_waiter(waiter)
            raise

    def _give_back(self, conn: asyncpg.Connection[Any]) -> None:
        if self._closed or conn.is_closed():
            self._discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: asyncpg.Connection[Any]) -> None:
        conn.terminate()
        self._open -= 1
        if self._waiters and not self._closed:
            self._open += 1
            task = asyncio.get_running_loop().create_task(self._replace())
            task.add_done_callback(lambda done: done.exception() if not done.cancelled() else None)

    async def _replace(self) -> None:
        try:
            conn = await self._connect()
        except Exception as exc:
            self._open -= 1
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
                    return
            return
        self._give_back(conn)

    def _drop_waiter(self, waiter: asyncio.Future[asyncpg.Connection[Any]]) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        conn = await self._take()
        try:
            yield conn
        except asyncpg.PostgresError:
            self._give_back(conn)  # a server error leaves the connection usable
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._give_back(conn)

    # --- one statement each ---------------------------------------------------------------

    async def fetchval(self, sql: str, *args: object) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(sql, *args)

    async def fetchrow(self, sql: str, *args: object) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        async with self.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: object) -> str:
        async with self.acquire() as conn:
            return await conn.execute(sql, *args)
