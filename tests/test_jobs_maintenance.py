"""Job maintenance by one elected leader: election, handover, survival of failures, the steps."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.db import Database
from app.jobs import Jobs, enqueue, enqueue_many
from app.jobs.maintenance import Maintenance
from app.jobs.worker import Worker
from app.services import Services
from tests.helpers import eventually
from tests.jobs_helpers import (
    JOB_SETTINGS,
    drain,
    finish,
    job_row,
    job_services,
    read_until,
    runs,
    worker_process,
)


@pytest.fixture
def job_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**JOB_SETTINGS)


@pytest.fixture
async def services(job_settings: Settings) -> AsyncIterator[Services]:
    async with job_services(job_settings) as opened:
        yield opened


async def lease(db: Database) -> dict[str, Any] | None:
    """The jobs lease row, with the server's time of reading it."""
    async with db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT holder, expires_at, now() AS read_at FROM maintenance_leases "
            "WHERE name = 'jobs'"
        )
    return dict(row) if row is not None else None


async def holder(db: Database) -> str | None:
    row = await lease(db)
    return row["holder"] if row is not None else None


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[1])  # host:pid:random


async def fewest_rounds(workers: list[Worker]) -> int:
    return min(worker.maintenance.rounds for worker in workers)


@pytest.fixture
def long_lease(services: Services, make_settings: Callable[..., Settings]) -> Jobs:
    """The test's jobs with a 60 s lease: background rounds come every 20 s, so within a
    test the rounds that count are the ones it runs itself (no race with a stalled loop)."""
    settings = make_settings(**{**JOB_SETTINGS, "jobs_lease_seconds": 60})
    return Jobs(services.db, settings, services.jobs.registry, services.notifier)


async def test_one_of_two_workers_leads_and_only_it_maintains(
    services: Services, long_lease: Jobs
) -> None:
    workers = [Worker(long_lease) for _ in range(2)]
    steps_run = {worker.id: 0 for worker in workers}
    for worker in workers:

        async def count(worker_id: str = worker.id) -> None:
            steps_run[worker_id] += 1

        worker.maintenance.steps.append(count)
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    await eventually(lambda: fewest_rounds(workers), lambda n: n >= 1)  # started
    for _ in range(3):
        for worker in workers:
            await worker.maintenance.round()
    leaders = [worker for worker in workers if worker.maintenance.is_leader]
    assert len(leaders) == 1
    assert await holder(services.db) == leaders[0].id
    follower = next(worker for worker in workers if worker is not leaders[0])
    assert steps_run[follower.id] == 0
    assert steps_run[leaders[0].id] == 4  # its first round when it started, and three more
    for worker in workers:
        worker.stop()
    await asyncio.gather(*tasks)


async def test_a_leader_that_stops_hands_over_without_waiting_for_its_lease(
    services: Services, long_lease: Jobs
) -> None:
    first = Worker(long_lease)
    first_task = asyncio.create_task(first.run())
    await eventually(lambda: holder(services.db), lambda h: h == first.id)
    second = Worker(long_lease)
    second_task = asyncio.create_task(second.run())
    await eventually(lambda: fewest_rounds([second]), lambda n: n >= 1)
    assert not second.maintenance.is_leader
    first.stop()
    await first_task
    assert await lease(services.db) is None  # released on the way out
    # Its lease had most of its 60 s left: the next round of any worker takes over.
    assert await second.maintenance.round()
    assert await holder(services.db) == second.id
    second.stop()
    await second_task


async def test_a_killed_leader_is_replaced_once_its_lease_has_passed(
    services: Services, database_url: str
) -> None:
    env = {"LOG_LEVEL": "INFO", "JOBS_LEASE_SECONDS": "3"}
    first = await worker_process(database_url, **env)
    await read_until(first, "leads jobs maintenance")
    second = await worker_process(database_url, **env)
    await read_until(second, "serving queues")
    # Both compete now; kill whichever leads (the first, unless it stalled past its lease).
    leader_pid = pid_of(await holder(services.db) or "")
    doomed, heir = (first, second) if leader_pid == first.pid else (second, first)
    assert doomed.pid == leader_pid
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    orphaned = await lease(services.db)
    assert orphaned is not None

    async def read_lease() -> dict[str, Any] | None:
        row = await lease(services.db)
        # The heir keeps trying all along, and takes the row only once the lease ran out.
        if row is not None and row["read_at"] < orphaned["expires_at"]:
            assert row["holder"] == orphaned["holder"], row
        return row

    taken = await eventually(
        read_lease, lambda r: r is not None and pid_of(r["holder"]) == heir.pid
    )
    assert taken is not None
    assert taken["read_at"] >= orphaned["expires_at"]
    heir.send_signal(signal.SIGTERM)
    await finish(heir)
    assert await lease(services.db) is None  # and a graceful stop hands over at once


async def test_the_maintenance_loop_survives_a_failing_step(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(services.jobs)
    calls: list[int] = []  # the round in which each step ran
    again = asyncio.Event()

    async def broken() -> None:
        calls.append(worker.maintenance.rounds)
        if len(calls) == 1:
            raise RuntimeError("a maintenance step broke")
        again.set()

    after: list[int] = []

    async def next_step() -> None:
        after.append(worker.maintenance.rounds)

    worker.maintenance.steps[:0] = [broken, next_step]
    with caplog.at_level(logging.ERROR, logger="app.jobs.maintenance"):
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            await again.wait()
        worker.stop()
        await task
    assert after[0] == calls[0]  # the round went on past the failure
    assert calls[1] > calls[0]  # and the next one ran the failed step again
    failures = [r for r in caplog.records if "broken failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "a maintenance step broke" in str(failures[0].exc_info[1])


async def test_a_round_that_cannot_reach_the_lease_is_logged_and_the_next_one_leads(
    services: Services, job_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    impatient = job_settings.model_copy(update={"db_command_timeout": 0.3})
    impatient_db = await Database.connect(impatient, impatient.database_url)
    try:
        jobs = Jobs(impatient_db, impatient, services.jobs.registry, services.notifier)
        maintenance = Maintenance(jobs, "impatient-worker")
        async with services.db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE maintenance_leases IN ACCESS EXCLUSIVE MODE")
            with caplog.at_level(logging.ERROR, logger="app.jobs.maintenance"):
                assert not await maintenance.round()
        assert any(r.exc_info for r in caplog.records if "leader lease" in r.getMessage())
        assert await maintenance.round()
        await maintenance.release()
    finally:
        await impatient_db.close()


async def test_overlapping_leaders_enqueue_each_periodic_slot_once(services: Services) -> None:
    # Two leaders overlap when one stalls past its lease; the slot is still taken once.
    minute = datetime(2026, 12, 2, 9, 30, 15, tzinfo=UTC)
    now = minute
    leaders = [Maintenance(services.jobs, f"leader-{n}", clock=lambda: now) for n in range(3)]

    async def periodic_jobs() -> int:
        async with services.db.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE name = 'test.periodic'"
            )
        return count

    await asyncio.gather(*(leader.schedule_periodic() for leader in leaders))
    assert await periodic_jobs() == 1
    await drain(services, clock=lambda: now)  # runs it (and deletes it: a success)
    assert (len(await runs(services.db, "periodic")), await periodic_jobs()) == (1, 0)
    now = minute + timedelta(seconds=40)  # the same slot is not enqueued again
    await asyncio.gather(*(leader.schedule_periodic() for leader in leaders))
    assert await periodic_jobs() == 0
    now = minute + timedelta(minutes=1)
    await asyncio.gather(*(leader.schedule_periodic() for leader in leaders))
    assert await periodic_jobs() == 1


async def test_the_leader_rescues_jobs_whose_lease_ran_out(services: Services) -> None:
    job_id = await enqueue("test.record", {"value": "orphan"})
    assert job_id is not None
    async with services.db.acquire() as conn:  # as a worker that died holding it leaves it
        await conn.execute(
            "UPDATE jobs SET state = 'running', attempt = 1, locked_by = 'gone:1:x', "
            "locked_until = now() - interval '1 second' WHERE id = $1",
            job_id,
        )
    await Maintenance(services.jobs, "leader").rescue_expired()
    row = await job_row(services.db, job_id)
    assert row["state"] == "available"
    assert row["locked_by"] is None
    assert "worker gone:1:x lost" in row["errors"][0]["error"]


async def test_the_leader_reports_queue_depth_and_a_follower_does_not(
    services: Services,
) -> None:
    def depth() -> float | None:
        return REGISTRY.get_sample_value("jobs_available", {"queue": "default"})

    leader = Maintenance(services.jobs, "leader")
    await enqueue_many("test.record", [{"value": n} for n in range(3)])
    assert await leader.round()
    assert depth() == 3
    await drain(services)
    await leader.sample_queues()
    assert depth() == 0  # an emptied queue reads 0, not its last depth
    async with services.db.acquire() as conn:  # someone else leads from now on
        await conn.execute(
            "UPDATE maintenance_leases SET holder = 'other', expires_at = 'infinity'"
        )
    assert not await leader.round()
    assert depth() is None
