"""A primary and a real streaming replica of it, for the read-routing tests.

The pair is separate from the suite's test server: the replica copies a whole cluster
(``pg_basebackup -R``), and its tests inject lag and stop it mid-test, which must not reach
the databases other tests use. One pair per test module: an ``initdb``, one migration run,
one base backup — about two seconds.

Import the fixtures into a test module: ``from tests.replica import replication, ...``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.db.embedded_replica import EmbeddedReplica
from app.deps import ReadConn
from app.main import create_app
from app.services import Services
from tests.conftest import dsn_for
from tests.helpers import eventually

DATABASE = "pgfirst"


@dataclass
class Replication:
    primary: EmbeddedPostgres
    replica: EmbeddedReplica
    primary_url: str
    replica_url: str

    async def query_replica(self, sql: str) -> object:
        conn = await asyncpg.connect(self.replica_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def caught_up(self) -> None:
        """Wait until the replica has replayed everything the primary has written."""
        conn = await asyncpg.connect(self.primary_url)
        try:
            target = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
        finally:
            await conn.close()
        await eventually(
            lambda: self.query_replica("SELECT pg_last_wal_replay_lsn()"),
            lambda replayed: isinstance(replayed, int) and replayed >= target,
        )

    async def set_apply_delay(self, seconds: float) -> None:
        await asyncio.to_thread(self.replica.set_apply_delay, seconds)
        expected = f"{int(seconds * 1000)}ms" if seconds else "0"
        await eventually(
            lambda: self.query_replica("SHOW recovery_min_apply_delay"),
            lambda shown: shown in {expected, f"{seconds:g}s"},
        )

    async def stop_replica(self) -> None:
        await asyncio.to_thread(self.replica.stop)

    async def start_replica(self) -> None:
        await asyncio.to_thread(self.replica.ensure_running)


@pytest.fixture(scope="module")
async def replication() -> AsyncIterator[Replication]:
    base = Path(tempfile.mkdtemp(prefix="pgfirst-replica-"))
    primary = EmbeddedPostgres(base / "primary", ephemeral=True)
    replica = EmbeddedReplica(base / "replica", primary=primary)
    try:
        admin_dsn = await asyncio.to_thread(primary.ensure_running)
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        primary_url = dsn_for(admin_dsn, DATABASE)
        await asyncio.to_thread(migrate.upgrade, primary_url)
        replica_dsn = await asyncio.to_thread(replica.ensure_running)
        yield Replication(primary, replica, primary_url, dsn_for(replica_dsn, DATABASE))
    finally:
        await asyncio.to_thread(replica.destroy)
        await asyncio.to_thread(primary.destroy)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def replication_ready(replication: Replication) -> Replication:
    """The pair as every test expects it: replica running, no delay, caught up."""
    await replication.start_replica()
    await replication.set_apply_delay(0)
    await replication.caught_up()
    return replication


def add_probe_route(app: FastAPI) -> None:
    """/test/read: which server a ``ReadConn`` reached, and how many tasks it sees."""

    @app.api_route("/test/read", methods=["GET", "POST"])
    async def read(conn: ReadConn) -> dict[str, object]:
        row = await conn.fetchrow(
            "SELECT pg_is_in_recovery() AS replica, (SELECT count(*) FROM tasks) AS tasks"
        )
        assert row is not None
        return dict(row)


@dataclass
class ReplicaApp:
    app: FastAPI
    transport: httpx.ASGITransport

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def client(self) -> httpx.AsyncClient:
        """A client with its own cookie jar: one user's browser."""
        return httpx.AsyncClient(transport=self.transport, base_url="http://testserver")


StartApp = Callable[..., AbstractAsyncContextManager[ReplicaApp]]


@pytest.fixture
def start_replica_app(
    replication_ready: Replication, make_settings: Callable[..., Settings]
) -> StartApp:
    """``async with start_replica_app(**settings) as app``: the app reading from the replica,
    started, with the /test/read probe; replicas are checked every 50 ms."""

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[ReplicaApp]:
        values: dict[str, object] = {
            "database_url": replication_ready.primary_url,
            "database_replica_urls": [replication_ready.replica_url],
            "database_replica_check_interval": 0.05,
        }
        values.update(overrides)
        app = create_app(make_settings(**values))
        add_probe_route(app)
        async with app.router.lifespan_context(app):
            yield ReplicaApp(app, httpx.ASGITransport(app=app))

    return start


@pytest.fixture
async def replica_app(start_replica_app: StartApp) -> AsyncIterator[ReplicaApp]:
    async with start_replica_app() as started:
        yield started
