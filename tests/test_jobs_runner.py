"""The worker's slots: a cancelled or timed-out job frees its slot for the next one, jobs
never run more than ``concurrency`` at a time, and the per-job metrics add up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.db import Database
from app.jobs import cancel_job, enqueue
from app.jobs.worker import Worker
from app.services import Services
from tests.helpers import eventually
from tests.jobs_helpers import JOB_SETTINGS, drain, job_row, job_services, runs


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with job_services(make_settings(**JOB_SETTINGS)) as opened:
        yield opened


@pytest.fixture
def db(services: Services) -> Database:
    return services.db


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def test_a_timed_out_job_frees_its_slot_for_the_next(
    db: Database, services: Services
) -> None:
    slow = await enqueue("test.slow")  # 0.3 s timeout, sleeps 30 s
    await enqueue("test.record", {"value": "after"})
    assert slow is not None
    await drain(services, concurrency=1)
    assert "timed out after 0.3 s" in (await job_row(db, slow))["errors"][0]["error"]
    assert await runs(db, "record") == ["after"]


async def test_a_cancelled_job_frees_its_slot_for_the_next(
    db: Database, services: Services
) -> None:
    long = await enqueue("test.long", {"marker": "x"})
    assert long is not None
    worker = Worker(services.jobs, concurrency=1)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: runs(db, "long.started"), lambda r: r == ["x"])
    await enqueue("test.record", {"value": "next"})
    assert await cancel_job(long)
    await eventually(lambda: runs(db, "record"), lambda r: r == ["next"])
    worker.stop()
    await task
    assert (await job_row(db, long))["state"] == "cancelled"


async def test_no_more_jobs_run_at_once_than_the_concurrency(
    db: Database, services: Services
) -> None:
    for n in range(12):
        await enqueue("test.sleep", {"marker": str(n), "seconds": 0.2})
    worker = Worker(services.jobs, concurrency=3)
    task = asyncio.create_task(worker.run())
    most = 0
    while len(await runs(db, "sleep.started")) < 12:
        most = max(most, len(worker.runner.running_ids()))
        await asyncio.sleep(0.01)
    worker.stop()
    await task
    assert most == 3


async def test_finished_jobs_and_run_times_are_counted(services: Services) -> None:
    succeeded = sample("jobs_finished_total", outcome="succeeded")
    retried = sample("jobs_finished_total", outcome="retried")
    timed = sample("job_run_seconds_count", name="test.record")
    waited = sample("job_wait_seconds_count")
    for n in range(5):
        await enqueue("test.record", {"value": n})
    await enqueue("test.fail")
    await drain(services)
    # A lone burst worker also runs the built-in periodic jobs that are due.
    assert sample("jobs_finished_total", outcome="succeeded") - succeeded >= 5
    assert sample("jobs_finished_total", outcome="retried") - retried >= 1
    assert sample("job_run_seconds_count", name="test.record") - timed == 5
    assert sample("job_wait_seconds_count") - waited >= 6
