"""Behind a real PgBouncer in transaction mode: what the pooler changes, and the pre-flip check.

The whole API and jobs suites also run through the pooler (PGFIRST_TEST_MODE=pooler, run by
scripts/test); these tests cover what only the pooler shows: server connections shared
between clients, LISTEN on the direct URL, polling without one, and ``app db check-pooler``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db.embedded_pgbouncer import LocalPgBouncer
from app.db.pooler_check import PoolerTarget, check_pooler, failed
from app.jobs import enqueue
from app.main import create_app
from tests.auth_helpers import new_user
from tests.conftest import database_name
from tests.helpers import eventually, run_cli
from tests.jobs_helpers import JOB_SETTINGS, job_services, runs
from tests.pooler import pgbouncer_installed


@pytest.fixture(scope="module")
def single_server_pooler(pg_admin_dsn: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer with one server connection per database: every client shares it."""
    pgbouncer_installed()
    run_dir = Path(tempfile.mkdtemp(prefix="pgfirst-pgbouncer-one-"))
    bouncer = LocalPgBouncer(run_dir, server_dsn=pg_admin_dsn, default_pool_size=1)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def pooled(
    pgbouncer: LocalPgBouncer, database_url: str, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    """Settings through the suite's pooler, with the direct URL unless told otherwise."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": pgbouncer.dsn(database_name(database_url)),
            "database_direct_url": database_url,
            "db_pool_mode": "pgbouncer",
            **JOB_SETTINGS,
        }
        values.update(overrides)
        return make_settings(**values)

    return make


@pytest.fixture
async def one_server_client(
    single_server_pooler: LocalPgBouncer,
    database_url: str,
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url=single_server_pooler.dsn(database_name(database_url)),
        database_direct_url=database_url,
        db_pool_mode="pgbouncer",
        db_pool_max=8,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_concurrent_requests_share_one_server_connection_without_statement_clashes(
    one_server_client: httpx.AsyncClient,
) -> None:
    # Eight pooled client connections take turns on one server connection: with asyncpg's
    # statement cache on, the second client to prepare __asyncpg_stmt_1__ there would fail.
    headers = await new_user(one_server_client, "shared@example.com")

    async def create(n: int) -> int:
        response = await one_server_client.post(
            "/api/tasks", json={"title": f"task {n}"}, headers=headers
        )
        return response.status_code

    statuses = await asyncio.gather(*(create(n) for n in range(24)))
    listed = await one_server_client.get("/api/tasks?limit=100", headers=headers)
    assert statuses == [201] * 24
    assert len(listed.json()["items"]) == 24


async def test_job_wakeups_listen_on_the_direct_url_while_queries_go_through_the_pooler(
    pooled: Callable[..., Settings],
) -> None:
    # A long poll interval: a job that runs at once was woken by a NOTIFY, not found by a poll.
    settings = pooled(jobs_poll_interval=60)
    async with job_services(settings) as services:
        assert services.notifier.connected
        worker = asyncio.create_task(_run_worker(services))
        try:
            await enqueue("test.record", {"value": "woken"})
            await eventually(lambda: runs(services.db, "record"), lambda rows: rows == ["woken"])
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def test_without_a_direct_url_the_notifier_polls_and_jobs_still_run(
    pooled: Callable[..., Settings],
) -> None:
    async with job_services(pooled(database_direct_url=None)) as services:
        assert services.notifier.health() == ("polling (no direct URL)", True)
        worker = asyncio.create_task(_run_worker(services))
        try:
            await enqueue("test.record", {"value": "polled"})
            await eventually(lambda: runs(services.db, "record"), lambda rows: rows == ["polled"])
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def _run_worker(services: object) -> None:
    from app.jobs.worker import Worker

    await Worker(services.jobs).run()  # type: ignore[attr-defined]


# --- app db check-pooler ------------------------------------------------------------------


async def test_check_pooler_passes_a_correct_setup(pooled: Callable[..., Settings]) -> None:
    findings = await check_pooler(PoolerTarget.from_settings(pooled()))
    statuses = {finding.check: finding.status for finding in findings}
    assert not failed(findings), findings
    assert statuses["pooler"] == "ok"
    assert statuses["pool_mode"] == "ok"
    assert statuses["direct URL"] == "ok"
    assert statuses["prepared statements"] == "ok"


async def test_check_pooler_fails_a_pooler_url_with_the_statement_cache_on(
    pooled: Callable[..., Settings],
) -> None:
    # DATABASE_URL moved to the pooler but DB_POOL_MODE left at direct.
    findings = await check_pooler(PoolerTarget.from_settings(pooled(db_pool_mode="direct")))
    statuses = {finding.check: finding.status for finding in findings}
    assert statuses["prepared statements"] == "error"


async def test_check_pooler_warns_when_listen_has_no_direct_url(
    pooled: Callable[..., Settings],
) -> None:
    findings = await check_pooler(PoolerTarget.from_settings(pooled(database_direct_url=None)))
    statuses = {finding.check: finding.status for finding in findings}
    assert statuses["direct URL"] == "warn"


async def test_check_pooler_fails_a_direct_url_that_is_the_pooler_too(
    pooled: Callable[..., Settings], pgbouncer: LocalPgBouncer, database_url: str
) -> None:
    through_pooler = pgbouncer.dsn(database_name(database_url))
    settings = pooled(database_direct_url=through_pooler)
    findings = await check_pooler(PoolerTarget.from_settings(settings))
    statuses = {finding.check: finding.status for finding in findings}
    assert statuses["direct URL"] == "error"
    assert failed(findings)


async def test_check_pooler_fails_a_session_advisory_lock_held_now(
    pooled: Callable[..., Settings], db_conn: asyncpg.Connection
) -> None:
    await db_conn.execute("SELECT pg_advisory_lock(42)")
    findings = await check_pooler(PoolerTarget.from_settings(pooled()))
    statuses = {finding.check: finding.status for finding in findings}
    assert statuses["session advisory locks"] == "error"


async def test_check_pooler_fails_more_client_connections_than_the_pooler_takes(
    pooled: Callable[..., Settings],
) -> None:
    # The suite's pooler takes 1000 clients; 101 processes of 10 connections exceed it.
    target = PoolerTarget.from_settings(pooled(db_pool_max=10), instances=101)
    findings = await check_pooler(target)
    statuses = {finding.check: finding.status for finding in findings}
    assert statuses["max_client_conn"] == "error"


async def test_app_db_check_pooler_exits_1_and_names_what_would_break(
    pgbouncer: LocalPgBouncer, database_url: str
) -> None:
    code, stderr = await run_cli(
        "db",
        "check-pooler",
        "--pooler-url",
        pgbouncer.dsn(database_name(database_url)),
        "--instances",
        "200",
        DATABASE_URL=database_url,
        DB_POOL_MAX="10",
    )
    assert code == 1, stderr
    assert "max_client_conn" in stderr


async def test_app_db_check_pooler_prints_json_and_exits_0_when_nothing_would_break(
    pgbouncer: LocalPgBouncer, database_url: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        *_app_command("db", "check-pooler", "--json"),
        env=_env(
            DATABASE_URL=pgbouncer.dsn(database_name(database_url)),
            DATABASE_DIRECT_URL=database_url,
            DB_POOL_MODE="pgbouncer",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    findings = json.loads(stdout)
    assert process.returncode == 0, stderr.decode()
    assert {"check": "pool_mode", "status": "ok", "detail": "transaction"} in findings


def _app_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "app.cli", *args]


def _env(**values: str) -> dict[str, str]:
    import os

    return {**os.environ, "ENV": "test", **values}


async def test_behind_the_pooler_the_claim_loop_keeps_its_session_on_the_direct_url(
    pooled: Callable[..., Settings], db_conn: asyncpg.Connection
) -> None:
    from app.jobs.worker import Worker

    async with job_services(pooled()) as services:
        worker = Worker(services.jobs, burst=True)
        await worker.bookkeeper.claim(["default"], 10, [])
        direct = await db_conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'pgfirst-direct'"
        )
        await worker.bookkeeper.close()
    assert direct == 2  # the notifier's LISTEN and the claim loop


async def test_app_migrate_runs_on_the_direct_url_when_one_is_set(database_url: str) -> None:
    # DATABASE_URL leads nowhere: only the direct URL can have been used.
    code, stderr = await run_cli(
        "migrate",
        DATABASE_URL="postgresql://nobody@127.0.0.1:9/unreachable",
        DATABASE_DIRECT_URL=database_url,
    )
    assert code == 0, stderr
