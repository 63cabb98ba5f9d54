"""Single-key reads that find every cache connection busy share one statement.

A cold start — L1 empty, hundreds of users' sessions and lists read at once — sends more
single-key reads than the cache's few connections (CACHE_POOL_SIZE) can carry one round
trip at a time. Queued one by one, the last of them waits for every read ahead of it: the
tail of the first second after a restart was 7.6x the median (docs/benchmarks.md).

So a read that finds a free connection runs at once, as before, and a read that would
queue joins a batch instead: the next connection to come free serves the whole batch with
one ``key = ANY($1)`` statement, and each reader gets its own row. Reads arriving while
that statement runs start the next batch. Under load the number of statements in flight
stays at the number of connections while each carries as many keys as were waiting — the
same idea as a DataLoader, but only where it pays: an idle process never waits to batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from app.cache.connections import ConnectionSet

Row = tuple[bytes, float | None]


class ReadCoalescer:
    """``read(key)`` through ``pool``: at once when a connection is free, else batched.

    ``read_one(key)`` and ``read_many(keys)`` run the statements; ``read_many`` is only
    called while this coalescer holds one of ``pool``'s connections for it.
    """

    def __init__(
        self,
        pool: ConnectionSet,
        read_one: Callable[[str], Awaitable[Row | None]],
        read_many: Callable[[Any, list[str]], Awaitable[dict[str, Row]]],
    ) -> None:
        self.pool = pool
        self._read_one = read_one
        self._read_many = read_many
        self._waiting: dict[str, list[asyncio.Future[Row | None]]] = {}
        self._collecting = False  # a batch task exists that has not taken its keys yet
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # statements that served a batch, and the keys they carried
        self.batched_keys = 0

    async def read(self, key: str) -> Row | None:
        if not self.pool.saturated():
            return await self._read_one(key)
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._collecting:
            self._collecting = True
            task = asyncio.get_running_loop().create_task(self._serve_batch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _serve_batch(self) -> None:
        batch: dict[str, list[asyncio.Future[Row | None]]] = {}
        try:
            async with self.pool.acquire() as conn:
                # Everything that queued while this task waited for the connection.
                batch, self._waiting = self._waiting, {}
                self._collecting = False
                keys = [key for key, futures in batch.items() if not all_done(futures)]
                rows = await self._read_many(conn, keys) if keys else {}
        except BaseException as exc:
            if not batch:  # failed before taking its keys: hand them to the readers
                batch, self._waiting = self._waiting, {}
                self._collecting = False
            # Cancelled (the cache is closing): the readers get what the connections'
            # own waiters get then, an error the cache serves as a miss.
            error = (
                exc
                if isinstance(exc, Exception)
                else asyncpg.InterfaceError("cache connections closed")
            )
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.batched_keys += len(keys)
        for key, futures in batch.items():
            row = rows.get(key)
            for future in futures:
                if not future.done():
                    future.set_result(row)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def all_done(futures: list[asyncio.Future[Row | None]]) -> bool:
    """Every reader of the key gave up (timed out): no need to read it."""
    return all(future.done() for future in futures)
