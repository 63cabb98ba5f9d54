"""The test harness: real PostgreSQL, real Redis, one fresh database per test.

- One embedded PostgreSQL 18 per run in a temp dir (fsync off), unless TEST_DATABASE_URL
  names a server to use instead.
- Migrations run once into a template database; each test gets ``CREATE DATABASE ...
  TEMPLATE`` of it (a few ms) and it is dropped afterwards — tests never share rows, and a
  developer's own database is never touched.
- Redis: REDIS_URL, else ``redis-server`` from PATH on a free port. With CI=true a missing
  Redis fails the run, and so does any skipped test.
- Suite modes (PGFIRST_TEST_MODE), run by scripts/test after the main pass, change what
  every test's settings say unless the test sets those settings itself (a test about one
  backend names it):
  ``pooler`` — DATABASE_URL through a real PgBouncer in transaction mode
  (``tests/pooler.py``), DATABASE_DIRECT_URL to the server, DB_POOL_MODE=pgbouncer;
  ``redis`` — CACHE_BACKEND, PUBSUB_BACKEND and RATE_LIMIT_BACKEND all redis, the Redis
  emptied before each test (tests share it, and fresh databases reuse ids).
  A mode pass runs only the tests that build their settings with ``make_settings`` (directly
  or through ``settings``, ``app``, ``client``...): the others would run exactly as in the
  main pass (a subprocess gets its own environment, a unit test has no settings).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings, load_settings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.main import create_app
from tests.pooler import pgbouncer

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"
TEST_MODE = os.environ.get("PGFIRST_TEST_MODE", "")
TEST_MODES = {"", "pooler", "redis"}
# Apps started in this process with ENV=development or production would freeze the garbage
# collector's view of everything alive (app/runtime.py), and the suite starts hundreds.
os.environ.setdefault("GC_FREEZE_AFTER_STARTUP", "false")
if TEST_MODE not in TEST_MODES:
    raise pytest.UsageError(f"PGFIRST_TEST_MODE={TEST_MODE!r}: one of pooler, redis or unset")
__all__ = ["pgbouncer"]


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def dsn_for(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a superuser connection to the test server's ``postgres`` database."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    base = Path(tempfile.mkdtemp(prefix="pgfirst-test-"))
    server = EmbeddedPostgres(base / "pg", ephemeral=True)
    try:
        yield server.ensure_running()
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_admin(pg_admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_database(pg_admin_dsn: str, pg_admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A database migrated to head once per run, cloned by every test."""
    name = f"pgfirst_template_{os.getpid()}"
    await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await pg_admin.execute(f'CREATE DATABASE "{name}"')
    await asyncio.to_thread(migrate.upgrade, dsn_for(pg_admin_dsn, name))
    try:
        yield name
    finally:
        await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def create_database(
    pg_admin_dsn: str, pg_admin: asyncpg.Connection
) -> AsyncIterator[Callable[..., asyncpg.Connection]]:
    """Factory: ``await create_database(template=None)`` → DSN of a new, dropped-after DB."""
    created: list[str] = []

    async def create(template: str | None = None) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        await pg_admin.execute(f'CREATE DATABASE "{name}"{clause}')
        created.append(name)
        return dsn_for(pg_admin_dsn, name)

    yield create  # type: ignore[misc]
    for name in created:
        await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(create_database: Callable[..., object], template_database: str) -> str:
    """A fresh database at the migrations head, for this test only."""
    return await create_database(template_database)  # type: ignore[no-any-return, misc]


@pytest.fixture
def suite_mode_settings(request: pytest.FixtureRequest, database_url: str) -> dict[str, object]:
    """What PGFIRST_TEST_MODE changes in every test's settings (nothing by default)."""
    if TEST_MODE == "pooler":
        bouncer = request.getfixturevalue("pgbouncer")
        return {
            "database_url": bouncer.dsn(database_name(database_url)),
            "database_direct_url": database_url,
            "db_pool_mode": "pgbouncer",
        }
    if TEST_MODE == "redis":
        url = request.getfixturevalue("redis_url")
        _flush_redis(url)
        return {
            "redis_url": url,
            "cache_backend": "redis",
            "pubsub_backend": "redis",
            "rate_limit_backend": "redis",
        }
    return {}


@pytest.fixture
def make_settings(
    database_url: str, suite_mode_settings: dict[str, object]
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "env": "test",
            "database_url": database_url,
            "secret_key": TEST_SECRET_KEY,
            "db_pool_min": 1,
            "db_pool_max": 5,
            "log_format": "console",
            "jobs_inline_worker": False,
            # Cheap hashing: tests exercise the flow, not argon2's cost.
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "mailer": "memory",
        }
        if not overrides.keys() & suite_mode_settings.keys():
            values.update(suite_mode_settings)
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The app, not yet started: a test may add routes before using ``client``."""
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the ASGI app, with the lifespan run around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.fixture
async def db_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database, for arranging and checking rows."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


# --- Redis -------------------------------------------------------------------------------


@pytest.fixture
def channel() -> str:
    """A pub/sub channel no other test publishes on."""
    return f"test:{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    executable = shutil.which("redis-server")
    if executable is None:
        message = "a real Redis is needed: set REDIS_URL or put redis-server on PATH"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _flush_redis(url: str) -> None:
    from redis import Redis

    client = Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not TEST_MODE:
        return
    kept, deselected = [], []
    for item in items:
        uses_settings = "make_settings" in getattr(item, "fixturenames", ())
        (kept if uses_settings else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


# --- CI: nothing may be skipped ----------------------------------------------------------

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped and exitstatus == 0:
        session.exitstatus = 1
        print(f"\nCI=true: {len(_skipped)} skipped test(s) fail the run: {_skipped}")
