"""Faults under load, the short form of scripts/chaos.py.

Each test runs a real ``app serve`` process and ``app worker`` processes on a PostgreSQL
server of this module's own (restarting the suite's shared one would break every other
test), writes tasks over HTTP from a few users while an SSE client per user follows their
events, injects one fault, and then checks what must hold after any fault: every answer
was a 2xx or a 503 with Retry-After, every task that got a 2xx is in the database, every
SSE client saw every task's event (resuming with Last-Event-ID where its stream ended),
every job ran, and the app process is the one started before the fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.config import Settings, load_settings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.services import open_services
from scripts.chaos import (
    SLOW_JOB,
    Fault,
    Phase,
    RedisServer,
    base_env,
    kill_worker,
    missing_writes,
    phase,
    restart_postgres,
    terminate_listeners,
    unfinished_jobs,
    workers,
)
from scripts.streamkit import free_port, make_users

USERS = 4


@pytest.fixture(scope="module")
def chaos_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("chaos")) / "pg", ephemeral=True)
    migrate.upgrade(server.ensure_running())
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def chaos_env(chaos_postgres: EmbeddedPostgres) -> dict[str, str]:
    return base_env(chaos_postgres.dsn())


@pytest.fixture(scope="module")
async def chaos_users(chaos_env: dict[str, str]) -> list[tuple[int, str]]:
    settings = load_settings(**{key.lower(): value for key, value in chaos_env.items()})
    return await make_users(USERS, "chaos-test", settings)


@pytest.fixture
async def running_workers(chaos_env: dict[str, str]) -> AsyncIterator[list[object]]:
    async with workers(2, chaos_env) as processes:
        yield processes  # type: ignore[misc]


async def run_fault(env: dict[str, str], users: list[tuple[int, str]], fault: Fault) -> Phase:
    return await phase(env, users, [fault], settle=2, warmup=1)


def assert_nothing_lost(result: Phase) -> None:
    [report] = result.reports
    assert report.outcomes, "no requests were made during the fault"
    assert not report.violations, [(o.route, o.status, o.detail) for o in report.violations]
    assert result.events_missing == 0
    assert result.same_process


async def test_a_postgres_restart_answers_503_or_2xx_and_loses_nothing(
    chaos_postgres: EmbeddedPostgres,
    chaos_env: dict[str, str],
    chaos_users: list[tuple[int, str]],
) -> None:
    result = await run_fault(
        chaos_env,
        chaos_users,
        ("postgres restart, fast", lambda: restart_postgres(chaos_postgres, "fast")),
    )
    assert_nothing_lost(result)
    assert await missing_writes(chaos_env["DATABASE_URL"], result.load) == 0


async def test_a_killed_listen_connection_loses_no_event(
    chaos_env: dict[str, str], chaos_users: list[tuple[int, str]]
) -> None:
    dsn = chaos_env["DATABASE_URL"]
    result = await run_fault(
        chaos_env, chaos_users, ("LISTEN killed", lambda: terminate_listeners(dsn))
    )
    assert_nothing_lost(result)
    assert result.reports[0].note != "0 LISTEN connections terminated"


async def test_every_job_runs_after_a_worker_is_killed_mid_queue(
    chaos_env: dict[str, str],
    chaos_users: list[tuple[int, str]],
    running_workers: list[object],
) -> None:
    result = await run_fault(
        chaos_env,
        chaos_users,
        ("worker SIGKILL", lambda: kill_worker(running_workers, chaos_env)),  # type: ignore[arg-type]
    )
    assert_nothing_lost(result)
    assert not result.reports[0].note.startswith("worker killed while running 0 ")
    assert await unfinished_jobs(chaos_env["DATABASE_URL"], within=30) == {}
    conn = await asyncpg.connect(chaos_env["DATABASE_URL"])
    try:
        rerun = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE name = $1 AND attempt > 1", SLOW_JOB
        )
    finally:
        await conn.close()
    assert rerun > 0, result.reports[0].note  # the killed worker's jobs were rescued and run again


async def test_an_event_committed_while_redis_is_away_reaches_subscribers_once_it_is_back(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    redis = RedisServer(free_port(), tmp_path)  # its own: stopping the suite's would break others
    redis.start()
    try:
        settings = make_settings(pubsub_backend="redis", redis_url=redis.url)
        async with open_services(settings) as services:
            subscription = await services.broker.subscribe(["chaos:redis-away"])
            await asyncio.to_thread(redis.stop)
            async with services.db.transaction() as conn:
                await services.broker.publish("chaos:redis-away", {"n": 1}, conn=conn)
            await asyncio.to_thread(redis.start)
            event = await asyncio.wait_for(anext(subscription), 30)
            assert event.payload == {"n": 1}
    finally:
        redis.stop()


async def test_a_replay_that_fails_after_a_reconnect_is_retried_until_it_succeeds(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_services(make_settings(pubsub_backend="postgres")) as services:
        broker: Any = services.broker
        subscription = await broker.subscribe(["chaos:replay"])
        read_back = broker._events_since
        failures = [asyncpg.InternalClientError("another operation (2) is in progress")]

        async def fails_once(*args: Any) -> Any:
            if failures:  # a pooled connection the restart ended, as asyncpg reports it
                raise failures.pop()
            return await read_back(*args)

        monkeypatch.setattr(broker, "_events_since", fails_once)
        async with services.db.acquire() as conn:
            # Stored without a NOTIFY: only the replay after the reconnect can deliver it.
            await conn.execute(
                "INSERT INTO events (channel, payload) VALUES ($1, $2)", "chaos:replay", {"n": 1}
            )
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'pgfirst-direct'"
            )
        event = await asyncio.wait_for(anext(subscription), 20)
        assert event.payload == {"n": 1}
        assert not failures
