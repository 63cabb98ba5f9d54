"""`app jobs retry|cancel` and `app worker --burst`, each run as a real subprocess."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

import tests.jobs_fixtures as fixtures
from tests.helpers import run_cli


async def insert_job(conn: asyncpg.Connection, state: str = "available") -> int:
    finished = state in ("succeeded", "dead", "cancelled")
    job_id: int = await conn.fetchval(
        "INSERT INTO jobs (name, state, attempt, max_attempts, finished_at) "
        "VALUES ('test.record', $1::job_state, $2, 3, CASE WHEN $3 THEN now() END) RETURNING id",
        state,
        3 if state == "dead" else 0,
        finished,
    )
    return job_id


async def state_of(conn: asyncpg.Connection, job_id: int) -> str:
    state: str = await conn.fetchval("SELECT state::text FROM jobs WHERE id = $1", job_id)
    return state


async def test_app_jobs_retry_makes_a_dead_job_available(
    db_conn: asyncpg.Connection, database_url: str
) -> None:
    job_id = await insert_job(db_conn, "dead")
    code, stderr = await run_cli("jobs", "retry", str(job_id), DATABASE_URL=database_url)
    assert code == 0, stderr
    assert f"job {job_id}: retry done" in stderr
    assert await state_of(db_conn, job_id) == "available"


async def test_app_jobs_retry_refuses_a_job_that_is_still_waiting(
    db_conn: asyncpg.Connection, database_url: str
) -> None:
    job_id = await insert_job(db_conn, "available")
    code, stderr = await run_cli("jobs", "retry", str(job_id), DATABASE_URL=database_url)
    assert code == 1
    assert f"job {job_id} cannot be retried: only dead or cancelled jobs can" in stderr
    assert await state_of(db_conn, job_id) == "available"


async def test_app_jobs_cancel_cancels_a_waiting_job(
    db_conn: asyncpg.Connection, database_url: str
) -> None:
    job_id = await insert_job(db_conn, "available")
    code, stderr = await run_cli("jobs", "cancel", str(job_id), DATABASE_URL=database_url)
    assert code == 0, stderr
    assert f"job {job_id}: cancel done" in stderr
    assert await state_of(db_conn, job_id) == "cancelled"


async def test_app_jobs_cancel_refuses_a_finished_job(
    db_conn: asyncpg.Connection, database_url: str
) -> None:
    job_id = await insert_job(db_conn, "succeeded")
    code, stderr = await run_cli("jobs", "cancel", str(job_id), DATABASE_URL=database_url)
    assert code == 1
    assert f"job {job_id} cannot be cancelled: only waiting or running jobs can" in stderr
    assert await state_of(db_conn, job_id) == "succeeded"


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("import_flag", [True, False])
async def test_app_worker_burst_logs_what_it_serves_and_that_it_stopped(
    db_conn: asyncpg.Connection, database_url: str, import_flag: bool
) -> None:
    # The fixtures' jobs come from `--import` or from JOBS_MODULES: the same registry.
    await db_conn.execute(fixtures.SCHEMA)
    args = ["--import", "tests.jobs_fixtures"] if import_flag else []
    env = {} if import_flag else {"JOBS_MODULES": "tests.jobs_fixtures"}
    code, stderr = await run_cli(
        "worker",
        "--burst",
        "--queues",
        "default,mail",
        "--concurrency",
        "3",
        *args,
        DATABASE_URL=database_url,
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        **env,
    )
    assert code == 0, stderr[-3000:]
    records = json_lines(stderr)
    started = next(r for r in records if "job_kinds" in r)
    assert started["level"] == "info"
    assert started["queues"] == ["default", "mail"]
    assert started["concurrency"] == 3
    assert started["burst"] is True
    assert {"test.record", "test.periodic", "pgfirst.prune_jobs", "pgfirst.send_email"} <= set(
        started["job_kinds"]
    )
    assert "pgfirst.embed_task" not in started["job_kinds"]  # the search queue is not served
    stopped = [r for r in records if r["msg"] == f"worker {started['worker']} stopped"]
    assert len(stopped) == 1
    assert stopped[0]["level"] == "info"
