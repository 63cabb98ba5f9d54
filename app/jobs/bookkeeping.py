"""A worker's own writes to the jobs table: claim, complete, fail, heartbeat, release.

Each statement finds its rows by id and this worker's ``locked_by``, so a worker only ever
touches the jobs it holds (a job rescued or cancelled meanwhile is left alone). Claims go
through the worker's own connection, whose session pins the claim's plan and skips the WAL
flush. That connection is a direct one (``Database.connect_direct``): behind PgBouncer
(``DB_POOL_MODE=pgbouncer``) it goes to DATABASE_DIRECT_URL, beside the notifier's LISTEN —
one server connection per worker process, which a claim loop keeps busy anyway, and a
claim in one round trip instead of a pooled transaction's BEGIN, SET LOCAL, Parse, Bind
and COMMIT (docs/benchmarks.md: ~30 % more jobs/s). Without a direct URL, where sessions
keep no settings, each claim is a pooled transaction with ``SET LOCAL`` instead.
Completions and failures are pooled transactions with the same settings. A success is
deleted, or kept as ``succeeded`` with JOBS_KEEP_SUCCEEDED, and counted in ``job_successes``
by the next completion, or by a claim at most once a second (the bookkeeper keeps the tally
in between). Why: ``sql.py`` and docs/jobs.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.config import Settings
from app.db import Connection, Database, Record
from app.jobs import sql
from app.jobs.queue import WAKE_CHANNEL

# Successes are counted in job_successes by a claim at most this often (sql.py: _COUNT), and
# by every completion.
COUNT_EVERY_SECONDS = 1.0
# A connection whose server backend is gone; a connection whose backend was terminated
# can raise InternalClientError on its next statement instead of a connection error.
CONNECTION_LOST = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
)


class Bookkeeper:
    """The statements of worker ``worker_id``; ``close()`` drops its claim connection."""

    def __init__(self, db: Database, settings: Settings, worker_id: str) -> None:
        self.db = db
        self.settings = settings
        self.worker_id = worker_id
        self._claim_conn: asyncpg.Connection[Record] | None = None
        keep = settings.jobs_keep_succeeded
        self._claim_sql = sql.CLAIM_KEEPING if keep else sql.CLAIM
        self._complete_sql = sql.COMPLETE_KEEPING if keep else sql.COMPLETE
        self.uncounted = 0  # successes recorded but not yet added to job_successes
        self._counted_at = 0.0

    async def claim(self, queues: list[str], limit: int, done: list[int]) -> list[Record]:
        """Record the successes ``done`` and lease up to ``limit`` jobs, in one statement
        that also counts the recorded successes if the last count is a second old."""
        due = time.monotonic() - self._counted_at >= COUNT_EVERY_SECONDS
        carried, count = self._take_count(done, due=due)
        args = (queues, limit, self.settings.jobs_lease_seconds, self.worker_id, done, count)
        try:
            rows = await self._claim(args)
        except BaseException:
            self.uncounted += carried
            raise
        self._counted(done, count)
        return rows

    async def _claim(self, args: tuple[object, ...]) -> list[Record]:
        if self.db.direct_url is None:  # behind PgBouncer without DATABASE_DIRECT_URL
            async with self.db.acquire() as conn, self.transaction(conn):
                return await conn.fetch(self._claim_sql, *args)
        conn = await self.claim_connection()
        try:
            return await conn.fetch(self._claim_sql, *args)
        except CONNECTION_LOST:
            await self.close()  # the next claim connects again
            raise

    async def complete(self, ids: list[int]) -> None:
        """Record the successes ``ids`` and count them with every one not yet counted."""
        carried, count = self._take_count(ids, due=True)
        try:
            async with self.db.acquire() as conn, self.transaction(conn):
                await conn.execute(self._complete_sql, ids, self.worker_id, count)
        except BaseException:
            self.uncounted += carried
            raise
        self._counted(ids, count)

    def _take_count(self, done: list[int], *, due: bool) -> tuple[int, int]:
        """What a statement recording ``done`` counts: (the earlier successes it carries,
        its whole count; 0 when not ``due``). The carried ones leave the tally before the
        statement is sent, so that a claim and a completion in flight at once never count
        the same success."""
        if not due:
            return 0, 0
        carried, self.uncounted = self.uncounted, 0
        return carried, carried + len(done)

    def _counted(self, done: list[int], count: int) -> None:
        """The statement recorded ``done`` and counted ``count``; with a count of 0, ``done``
        is left for a later statement to count."""
        if count:
            self._counted_at = time.monotonic()
        else:
            self.uncounted += len(done)

    async def fail(self, job_id: int, delay: float, error: str, trace: str) -> str | None:
        """Record a failed attempt; the job's new state (available or dead), None if not ours."""
        async with self.db.acquire() as conn, self.transaction(conn):
            state: str | None = await conn.fetchval(
                sql.FAIL, job_id, self.worker_id, delay, error, trace
            )
        return state

    async def heartbeat(self, ids: list[int]) -> set[int]:
        """Extend the leases of ``ids``; the ids still ours (the others were cancelled)."""
        async with self.db.acquire() as conn, self.transaction(conn):
            rows = await conn.fetch(
                sql.HEARTBEAT, ids, self.worker_id, self.settings.jobs_lease_seconds
            )
        return {row["id"] for row in rows}

    async def release(self, ids: list[int]) -> None:
        """Hand unfinished jobs back at once, their attempt not spent, and wake the others."""
        async with self.db.acquire() as conn, self.transaction(conn):
            await conn.execute(sql.RELEASE, ids, self.worker_id)
            await conn.execute(sql.WAKE, WAKE_CHANNEL, "released")

    @asynccontextmanager
    async def transaction(self, conn: Connection) -> AsyncIterator[None]:
        """A transaction for the worker's own writes (claims, completions, failures,
        heartbeats, releases): index plans only, and no wait for the WAL flush unless
        JOBS_SYNCHRONOUS_COMMIT (sql.py says why)."""
        durable = self.settings.jobs_synchronous_commit
        async with conn.transaction():
            await conn.execute(sql.BOOKKEEPING_DURABLE if durable else sql.BOOKKEEPING_FAST)
            yield

    async def claim_connection(self) -> asyncpg.Connection[Record]:
        """The claim loop's own connection, with the bookkeeping settings for its session.

        One autocommit statement per claim instead of BEGIN, SET LOCAL, the claim, COMMIT
        and the pool's reset query: a quarter of a claim's time, and of the pickup latency.
        Only the claim loop uses it, one statement at a time.
        """
        if self._claim_conn is None or self._claim_conn.is_closed():
            conn = await self.db.connect_direct()
            durable = self.settings.jobs_synchronous_commit
            await conn.execute(sql.CLAIMER_DURABLE if durable else sql.CLAIMER_FAST)
            self._claim_conn = conn
        return self._claim_conn

    async def close(self) -> None:
        conn, self._claim_conn = self._claim_conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:  # a broken connection may fail its goodbye: drop it anyway
                conn.terminate()
