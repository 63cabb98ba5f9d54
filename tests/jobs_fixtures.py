"""Job kinds used by the job tests: JOBS_MODULES / ``--import tests.jobs_fixtures``."""

from __future__ import annotations

import asyncio

from app.db import Database
from app.jobs import job
from app.observability.logging import request_id_var
from app.services import current_services

RECORD = "INSERT INTO test_job_runs (kind, value, request_id) VALUES ($1, $2, $3)"
SCHEMA = """
CREATE TABLE IF NOT EXISTS test_job_runs (
    id bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL,
    value text,
    request_id text
)
"""


async def _record(kind: str, value: object) -> None:
    db: Database = current_services.get().db
    async with db.acquire() as conn:
        await conn.execute(RECORD, kind, str(value), request_id_var.get())


@job(name="test.record")
async def record_value(value: object = None) -> None:
    await _record("record", value)


@job(name="test.unique_run")
async def unique_run(n: int) -> None:
    db: Database = current_services.get().db
    async with db.acquire() as conn:  # a unique index on value catches double runs
        await conn.execute(RECORD, "unique", str(n), None)


@job(name="test.fail", max_attempts=3)
async def always_fail() -> None:
    raise RuntimeError("this job always fails")


@job(name="test.slow", timeout=0.3)
async def too_slow() -> None:
    await asyncio.sleep(30)


@job(name="test.long", timeout=120)
async def long_running(marker: str) -> None:
    await _record("long.started", marker)
    await asyncio.sleep(60)
    await _record("long.finished", marker)


@job(name="test.periodic", cron="* * * * *")
async def every_minute() -> None:
    await _record("periodic", None)


@job(name="test.fail_often", max_attempts=5)
async def fail_often() -> None:
    raise RuntimeError("this job fails every attempt")


@job(name="test.sleep", timeout=60)
async def sleep_for(marker: str, seconds: float) -> None:
    await _record("sleep.started", marker)
    await asyncio.sleep(seconds)
    await _record("sleep.finished", marker)
