"""The worker over time: heartbeats, retry backoff, pruning of finished jobs, run_worker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest

from app.config import Settings
from app.current import ServicesNotOpen
from app.db import Database
from app.jobs import enqueue, enqueue_many, run_worker
from app.jobs.housekeeping import prune_jobs
from app.jobs.metrics import JOB_METRICS
from app.jobs.router import THROUGHPUT
from app.services import Services
from tests.helpers import eventually
from tests.jobs_helpers import JOB_SETTINGS, drain, job_row, job_services, runs, worker_for


@pytest.fixture
def job_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**JOB_SETTINGS)


@pytest.fixture
async def services(job_settings: Settings) -> AsyncIterator[Services]:
    async with job_services(job_settings) as opened:
        yield opened


async def test_heartbeats_keep_a_long_job_leased_while_another_worker_runs(
    make_settings: Callable[..., Settings], services: Services
) -> None:
    # Lease 1.5 s, a job of 5 s: without heartbeats its lease runs out three times over,
    # and the maintenance leader (either worker) would rescue it for the other to re-run.
    lease = services.settings.jobs_lease_seconds
    job_id = await enqueue("test.sleep", {"marker": "long", "seconds": lease * 3 + 0.5})
    assert job_id is not None
    # Successes kept, so that the row shows the one attempt and no error.
    kept = make_settings(**JOB_SETTINGS, jobs_keep_succeeded=True)
    first, second = worker_for(services, kept), worker_for(services, kept)
    first_task = asyncio.create_task(first.run())
    await eventually(lambda: runs(services.db, "sleep.started"), lambda r: r == ["long"])
    second_task = asyncio.create_task(second.run())
    await eventually(
        lambda: runs(services.db, "sleep.finished"), lambda r: r == ["long"], within=30
    )
    rounds_meanwhile = second.maintenance.rounds
    for worker in (first, second):
        worker.stop()
    await asyncio.gather(first_task, second_task)
    assert rounds_meanwhile >= 3  # the second worker was there for several lease periods
    assert await runs(services.db, "sleep.started") == ["long"]
    row = await job_row(services.db, job_id)
    assert row["state"] == "succeeded"
    assert row["attempt"] == 1
    assert row["errors"] == []


async def test_a_worker_with_slow_jobs_leases_only_what_its_slots_take(
    make_settings: Callable[..., Settings], services: Services
) -> None:
    # 20 jobs of 0.3 s on two slots: a whole batch (200) leased at once would leave another
    # worker nothing to do for 3 s; the claims follow the jobs' speed instead.
    await enqueue_many("test.sleep", [{"marker": str(n), "seconds": 0.3} for n in range(20)])
    worker = worker_for(services, make_settings(**JOB_SETTINGS), concurrency=2)
    running = asyncio.create_task(worker.run())
    held: list[int] = []
    try:
        for _ in range(12):
            await asyncio.sleep(0.1)
            async with services.db.acquire() as conn:
                held.append(
                    await conn.fetchval("SELECT count(*) FROM jobs WHERE locked_by = $1", worker.id)
                )
    finally:
        worker.stop()
        await running
    # Two running, and fewer than two waiting when it claims two more.
    assert 0 < max(held) <= 5, held
    assert worker.claim_plan() == (2, 2)


async def test_quick_jobs_are_claimed_a_batch_at_a_time_two_batches_ahead(
    make_settings: Callable[..., Settings], services: Services
) -> None:
    settings = make_settings(**JOB_SETTINGS, jobs_claim_batch=100)
    worker = worker_for(services, settings, concurrency=10)
    assert worker.claim_plan() == (10, 10)  # nothing ran yet: as if the jobs were slow
    worker.claim_seconds = 0.001
    worker.runner.mean_run_seconds = 0.000_01  # 10 µs: 10,000 jobs per claim round trip
    assert worker.claim_plan() == (200, 100)
    worker.runner.mean_run_seconds = 0.001  # 1 ms: 20 finish during a claim, times two
    assert worker.claim_plan() == (20, 20)
    worker.runner.mean_run_seconds = 2.0
    assert worker.claim_plan() == (10, 10)


@pytest.mark.parametrize("seed", [1, 2])
async def test_retries_back_off_exponentially_with_jitter_up_to_the_cap(
    make_settings: Callable[..., Settings], seed: int
) -> None:
    # Base 10 s doubling, capped at 25 s: 10, 20, 25 s before jitter, each jittered into
    # [d/2, d] by the worker's random source, which the test replays.
    settings = make_settings(**{**JOB_SETTINGS, "jobs_backoff_base": 10, "jobs_backoff_max": 25})
    jitter, replay = random.Random(seed), random.Random(seed)
    async with job_services(settings) as services:
        job_id = await enqueue("test.fail_often")
        assert job_id is not None
        for attempt, full in enumerate((10.0, 20.0, 25.0), start=1):
            await drain(services, rng=jitter)
            row = await job_row(services.db, job_id)
            assert row["attempt"] == attempt
            assert row["state"] == "available"
            failed_at = datetime.fromisoformat(row["errors"][-1]["at"])
            delay = (row["run_at"] - failed_at).total_seconds()
            assert full / 2 <= delay <= full
            assert delay == pytest.approx(full / 2 + replay.uniform(0, full / 2), abs=1e-5)
            async with services.db.acquire() as conn:  # due again now, not in seconds
                await conn.execute("UPDATE jobs SET run_at = now() WHERE id = $1", job_id)


async def _insert_job(db: Database, state: str, finished_hours_ago: float | None) -> int:
    async with db.acquire() as conn:
        job_id: int = await conn.fetchval(
            "INSERT INTO jobs (name, state, finished_at, run_at) VALUES ('test.record', "
            "$1::job_state, now() - make_interval(secs => $2::float8 * 3600), "
            "now() - interval '20 hours') RETURNING id",
            state,
            finished_hours_ago,
        )
    return job_id


async def _job_ids(db: Database) -> set[int]:
    async with db.acquire() as conn:
        return {row["id"] for row in await conn.fetch("SELECT id FROM jobs")}


@pytest.mark.parametrize("batch", [1, 10_000])
async def test_pruning_deletes_finished_jobs_past_the_retention_only(
    make_settings: Callable[..., Settings], batch: int
) -> None:
    settings = make_settings(**JOB_SETTINGS, jobs_retention_hours=10)
    async with job_services(settings) as services:
        db = services.db
        async with db.acquire() as conn:
            await conn.execute("DELETE FROM jobs")
        old = {
            await _insert_job(db, "succeeded", 11),
            await _insert_job(db, "dead", 30),
            await _insert_job(db, "cancelled", 10.5),
        }
        kept = {
            await _insert_job(db, "succeeded", 9),
            await _insert_job(db, "dead", 1),
            await _insert_job(db, "available", None),  # waiting for 20 hours: not finished
        }
        async with db.acquire() as conn:
            await conn.execute(
                "DELETE FROM job_successes;"
                "INSERT INTO job_successes (counted_at, worker, succeeded) VALUES"
                " (now() - interval '61 minutes', 'old', 5),"
                " (now() - interval '59 minutes', 'kept', 7)"
            )
        if batch == 10_000:  # the periodic job as registered, with JOBS_RETENTION_HOURS
            kind = services.jobs.registry.get("pgfirst.prune_jobs")
            assert kind is not None
            deleted: Any = await kind.handler()
        else:  # one row per statement: the loop goes on until a batch comes back short
            deleted = await prune_jobs(db, 10 * 3600, batch=batch)
        assert deleted == len(old)
        assert await _job_ids(db) == kept
        async with db.acquire() as conn:  # success counts are kept for an hour
            assert await conn.fetchval("SELECT array_agg(worker) FROM job_successes") == ["kept"]


@pytest.mark.parametrize("keep", [False, True])
async def test_successes_are_counted_once_for_the_ops_report_whether_kept_or_not(
    make_settings: Callable[..., Settings], keep: bool
) -> None:
    settings = make_settings(**JOB_SETTINGS, jobs_keep_succeeded=keep)
    async with job_services(settings) as services:
        db = services.db
        async with db.acquire() as conn:
            await conn.execute("DELETE FROM jobs; DELETE FROM job_successes")
        await _insert_job(db, "dead", 0)  # a failure of just now counts as finished too
        # The worker also runs the periodic jobs that fall due: its own success counter
        # (the one behind jobs_finished_total) says how many it ran in all.
        before = JOB_METRICS.succeeded
        worker = worker_for(services, settings)
        running = asyncio.create_task(worker.run())
        try:
            await enqueue_many("test.record", [{"value": n} for n in range(30)])
            # Counted while the worker runs, not only when it stops.
            await eventually(lambda: _counted(db), lambda n: n >= 30, within=5)
        finally:
            worker.stop()
            await running
        async with db.acquire() as conn:
            finished = await conn.fetchval(THROUGHPUT)
            writers = await conn.fetch("SELECT DISTINCT worker FROM job_successes")
        counted = await _counted(db)
    assert counted == JOB_METRICS.succeeded - before
    assert finished == counted + 1
    assert [row["worker"] for row in writers] == [worker.id]


async def _counted(db: Database) -> int:
    async with db.acquire() as conn:
        return int(await conn.fetchval("SELECT coalesce(sum(succeeded), 0) FROM job_successes"))


async def test_run_worker_runs_the_jobs_of_the_open_services(job_settings: Settings) -> None:
    async with job_services(job_settings) as services:
        await enqueue("test.record", {"value": "through run_worker"})
        await run_worker(burst=True)
        assert await runs(services.db, "record") == ["through run_worker"]


async def test_run_worker_outside_open_services_says_to_open_them() -> None:
    with pytest.raises(ServicesNotOpen, match="open_services"):
        await run_worker(burst=True)
