"""The job queue's semantics, on real PostgreSQL, with real worker processes where it matters."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import REGISTRY

import tests.jobs_fixtures as fixtures
from app.config import Settings
from app.db import Database
from app.jobs import Jobs, cancel_job, enqueue, enqueue_many, retry_job
from app.jobs.sql import CLAIM, CLAIM_KEEPING
from app.jobs.worker import Worker
from app.main import create_app
from app.observability.logging import request_id_var
from app.services import Services
from tests.helpers import eventually
from tests.jobs_helpers import (
    JOB_SETTINGS,
    drain,
    finish,
    job_row,
    job_services,
    runs,
    worker_for,
    worker_process,
)


@pytest.fixture
def job_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**JOB_SETTINGS)


@pytest.fixture
async def services(job_settings: Settings) -> AsyncIterator[Services]:
    async with job_services(job_settings) as opened:
        yield opened


@pytest.fixture
def db(services: Services) -> Database:
    return services.db


async def test_enqueue_commits_and_rolls_back_with_the_business_write(
    db: Database, job_settings: Settings, services: Services
) -> None:
    async def enqueue_then_fail() -> None:
        async with db.transaction() as conn:
            await enqueue("test.record", {"value": "lost"}, conn=conn)
            raise RuntimeError("the business write failed")

    with pytest.raises(RuntimeError):
        await enqueue_then_fail()
    async with db.transaction() as conn:
        await enqueue("test.record", {"value": "kept"}, conn=conn)
    await drain(services)
    assert await runs(db, "record") == ["kept"]


async def test_unique_keys_deduplicate_while_unfinished(
    db: Database, job_settings: Settings, services: Services
) -> None:
    first = await enqueue("test.record", {"value": 1}, unique_key="report:42")
    duplicate = await enqueue("test.record", {"value": 2}, unique_key="report:42")
    assert first is not None
    assert duplicate is None
    ids = await enqueue_many(
        "test.record",
        [{"value": 3}, {"value": 4}, {"value": 5}],
        unique_keys=["a", "report:42", None],
    )
    assert ids[0] is not None
    assert ids[1] is None
    assert ids[2] is not None
    await drain(services)
    assert sorted(await runs(db, "record")) == ["1", "3", "5"]
    assert await enqueue("test.record", {"value": 6}, unique_key="report:42") is not None


async def test_priority_then_run_at_order(
    db: Database, job_settings: Settings, services: Services
) -> None:
    from datetime import timedelta

    now = datetime.now(UTC)
    await enqueue("test.record", {"value": "low-old"}, run_at=now - timedelta(seconds=30))
    await enqueue("test.record", {"value": "low-new"}, run_at=now - timedelta(seconds=10))
    await enqueue("test.record", {"value": "high"}, priority=10)
    await enqueue("test.record", {"value": "later"}, delay=3600)
    await drain(services, concurrency=1)
    assert await runs(db, "record") == ["high", "low-old", "low-new"]  # 'later' is not due


@pytest.mark.parametrize("pool_mode", ["direct", "pgbouncer"])
async def test_a_claim_walks_the_claim_index_even_before_analyze(
    db: Database, make_settings: Callable[..., Settings], pool_mode: str, services: Services
) -> None:
    # Right after a burst of enqueues the table's statistics say it is (nearly) empty; a
    # planner left alone then sorts every waiting job on each claim instead of reading
    # the claim index in order and stopping after the batch. Direct: the claim loop's own
    # connection; pgbouncer: a pooled connection in a transaction.
    await enqueue_many("test.record", [{"value": n} for n in range(5000)])
    worker = worker_for(services, make_settings(**JOB_SETTINGS, db_pool_mode=pool_mode))
    explain = ("EXPLAIN " + CLAIM, ["default"], 100, 30.0, "w", [], 0)
    if pool_mode == "direct":
        claimer = await worker.bookkeeper.claim_connection()
        rows = await claimer.fetch(*explain)
        await worker.bookkeeper.close()
    else:
        async with db.acquire() as conn, worker.bookkeeper.transaction(conn):
            rows = await conn.fetch(*explain)
    plan = "\n".join(row[0] for row in rows)
    assert "Index Scan using jobs_claim" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.parametrize("claim", [CLAIM, CLAIM_KEEPING], ids=["deleting", "keeping"])
@pytest.mark.parametrize("pool_mode", ["direct", "pgbouncer"])
async def test_a_claim_planned_on_an_empty_table_still_reads_by_index(
    db: Database,
    make_settings: Callable[..., Settings],
    pool_mode: str,
    services: Services,
    claim: str,
) -> None:
    # A worker that starts on an empty queue caches its claim's generic plan then; a burst
    # enqueued later (not yet analysed) must not meet a plan that reads the whole table for
    # each `id = ANY(...)` lookup. The generic plan is what a prepared statement runs after
    # its first few calls.
    async with db.acquire() as conn:
        await conn.execute("VACUUM ANALYZE jobs")  # the statistics now say: no rows
    await enqueue_many("test.record", [{"value": n} for n in range(5000)])
    worker = worker_for(services, make_settings(**JOB_SETTINGS, db_pool_mode=pool_mode))
    prepare = (
        "PREPARE claim_probe(text[], int, float8, text, bigint[], int) AS " + claim,
        "EXPLAIN EXECUTE claim_probe('{default}', 100, 30, 'w', '{1,2,3}', 3)",
    )
    if pool_mode == "direct":
        claimer = await worker.bookkeeper.claim_connection()
        await claimer.execute(prepare[0])
        rows = await claimer.fetch(prepare[1])
        await worker.bookkeeper.close()
    else:
        async with db.acquire() as conn, worker.bookkeeper.transaction(conn):
            await conn.execute(prepare[0])
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            rows = await conn.fetch(prepare[1])
            await conn.execute("DEALLOCATE claim_probe")
    plan = "\n".join(row[0] for row in rows)
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan
    assert "Index Scan using jobs_claim" in plan, plan
    assert "on jobs_pkey" in plan, plan  # an index or bitmap scan by id, both fine


@pytest.mark.parametrize("synchronous", [False, True])
async def test_worker_bookkeeping_skips_the_wal_flush_unless_configured(
    db: Database, make_settings: Callable[..., Settings], synchronous: bool, services: Services
) -> None:
    # Off by default: a lost claim or completion re-runs a job (at-least-once), never loses one.
    settings = make_settings(**JOB_SETTINGS, jobs_synchronous_commit=synchronous)
    worker = worker_for(services, settings)
    expected = "on" if synchronous else "off"
    async with db.acquire() as conn:
        await conn.execute("SET synchronous_commit = on")
        async with worker.bookkeeper.transaction(conn):
            inside = await conn.fetchval("SHOW synchronous_commit")
        after = await conn.fetchval("SHOW synchronous_commit")
        await conn.execute("RESET synchronous_commit")
    assert inside == expected
    assert after == "on"  # SET LOCAL: the pooled connection is left as it was
    claimer = await worker.bookkeeper.claim_connection()  # the claim loop's own connection
    source = await claimer.fetchval(
        "SELECT source FROM pg_settings WHERE name = 'synchronous_commit'"
    )
    await worker.bookkeeper.close()
    assert (source == "session") is not synchronous  # else the server's own setting


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept"])
async def test_a_success_is_deleted_when_recorded_unless_successes_are_kept(
    db: Database, make_settings: Callable[..., Settings], services: Services, keep: bool
) -> None:
    # Both ways a success is recorded: carried by the next claim, or flushed on its own.
    await enqueue_many("test.record", [{"value": n} for n in range(3)])
    worker = worker_for(services, make_settings(**JOB_SETTINGS, jobs_keep_succeeded=keep))
    keeper = worker.bookkeeper
    first, second, third = [row["id"] for row in await keeper.claim(["default"], 3, [])]
    assert await keeper.claim(["default"], 3, [first]) == []  # the claim records `first`
    assert keeper.uncounted == 0  # and counts it: no count was written in the last second
    assert await keeper.claim(["default"], 3, []) == []
    await keeper.complete([second])  # a completion counts whatever the last count's age
    await keeper.close()
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, state::text, finished_at IS NOT NULL AS finished, locked_by FROM jobs"
            " WHERE id = ANY($1::bigint[]) ORDER BY id",
            [first, second, third],
        )
        counts = await conn.fetch(
            "SELECT succeeded FROM job_successes WHERE worker = $1 ORDER BY counted_at",
            worker.id,
        )
    # Two counts in the same second add up in one row; seconds apart, two rows.
    assert sum(row["succeeded"] for row in counts) == 2
    assert len(counts) in (1, 2)
    assert keeper.uncounted == 0
    left = {row["id"]: (row["state"], row["finished"], row["locked_by"]) for row in rows}
    still_running = ("running", False, worker.id)
    if keep:
        done = ("succeeded", True, None)
        assert left == {first: done, second: done, third: still_running}
    else:
        assert left == {third: still_running}


async def test_a_worker_behind_pgbouncer_claims_in_pooled_transactions(
    db: Database, make_settings: Callable[..., Settings], services: Services
) -> None:
    # No DATABASE_DIRECT_URL behind the pooler: no LISTEN anywhere, the worker polls.
    pooled = make_settings(**JOB_SETTINGS, db_pool_mode="pgbouncer")
    async with job_services(pooled) as behind_pooler:
        assert behind_pooler.notifier.health() == ("polling (no direct URL)", True)
        await enqueue_many("test.record", [{"value": n} for n in range(3)])
        await Worker(behind_pooler.jobs, burst=True).run()
    assert sorted(await runs(db, "record")) == ["0", "1", "2"]


async def test_failures_back_off_then_die_with_every_error_kept(
    db: Database, job_settings: Settings, services: Services
) -> None:
    job_id = await enqueue("test.fail")
    assert job_id is not None

    async def state() -> str:
        await drain(services)
        return str((await job_row(db, job_id))["state"])

    await eventually(state, lambda s: s == "dead", within=15, interval=0.05)
    row = await job_row(db, job_id)
    assert row["attempt"] == 3
    assert [e["attempt"] for e in row["errors"]] == [1, 2, 3]
    assert "this job always fails" in row["errors"][0]["error"]
    assert "Traceback" in row["errors"][0]["traceback"]


async def test_a_job_over_its_timeout_fails(
    db: Database, job_settings: Settings, services: Services
) -> None:
    job_id = await enqueue("test.slow")
    assert job_id is not None
    await drain(services)
    row = await job_row(db, job_id)
    assert row["state"] == "available"  # retried later
    assert "timed out after 0.3 s" in row["errors"][0]["error"]


async def test_cancel_a_waiting_job(
    db: Database, job_settings: Settings, services: Services
) -> None:
    job_id = await enqueue("test.record", {"value": "never"})
    assert job_id is not None
    assert await cancel_job(job_id)
    await drain(services)
    assert await runs(db, "record") == []
    assert (await job_row(db, job_id))["state"] == "cancelled"
    assert await retry_job(job_id)  # and bring it back
    await drain(services)
    assert await runs(db, "record") == ["never"]


async def test_cancel_stops_a_running_job(
    db: Database, job_settings: Settings, services: Services
) -> None:
    job_id = await enqueue("test.long", {"marker": "c"})
    assert job_id is not None
    worker = Worker(services.jobs)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: runs(db, "long.started"), lambda r: r == ["c"])
    assert await cancel_job(job_id)
    await eventually(lambda: _running(worker), lambda n: n == 0)
    worker.stop()
    await task
    assert (await job_row(db, job_id))["state"] == "cancelled"
    assert await runs(db, "long.finished") == []


async def _running(worker: Worker) -> int:
    return len(worker.runner.running_ids())


async def test_graceful_shutdown_releases_leases(
    db: Database, job_settings: Settings, services: Services
) -> None:
    job_id = await enqueue("test.long", {"marker": "s"})
    assert job_id is not None
    worker = Worker(services.jobs)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: runs(db, "long.started"), lambda r: r == ["s"])
    worker.stop()
    await task
    row = await job_row(db, job_id)
    assert row["state"] == "available"
    assert row["attempt"] == 0  # shutdown did not spend an attempt
    assert row["locked_by"] is None


async def test_request_id_travels_with_the_job(
    db: Database, job_settings: Settings, services: Services
) -> None:
    token = request_id_var.set("req-from-http")
    try:
        await enqueue("test.record", {"value": "x"})
    finally:
        request_id_var.reset(token)
    await drain(services)
    async with db.acquire() as conn:
        assert (
            await conn.fetchval("SELECT request_id FROM test_job_runs WHERE kind = 'record'")
            == "req-from-http"
        )


async def test_listener_loss_falls_back_to_polling_and_recovers(
    db: Database, job_settings: Settings, services: Services
) -> None:
    worker = Worker(services.jobs)
    task = asyncio.create_task(worker.run())
    # Started (its first maintenance round follows its LISTENs), and the notifier is up.
    await eventually(lambda: _started(worker))
    await eventually(lambda: _listening(services))
    async with db.acquire() as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    await enqueue("test.record", {"value": "while deaf"})
    await eventually(lambda: runs(db, "record"), lambda r: r == ["while deaf"])
    await eventually(lambda: _listening(services), within=10)  # the notifier reconnects
    worker.stop()
    await task


async def test_failing_claims_do_not_stop_the_worker(
    db: Database, job_settings: Settings, services: Services
) -> None:
    # Claims time out while the jobs table is locked, as they would while the database
    # restarts or fails over; the worker keeps trying and picks up once it is back.
    impatient = job_settings.model_copy(update={"db_command_timeout": 0.3})
    worker_db = await Database.connect(impatient, impatient.database_url)
    worker = Worker(Jobs(worker_db, impatient, services.jobs.registry, services.notifier))
    task = asyncio.create_task(worker.run())
    await enqueue("test.record", {"value": "first"})
    await eventually(lambda: runs(db, "record"), lambda r: r == ["first"])
    # Its success recorded first: a lease left to lapse during the outage is rescued and
    # the job runs again (at-least-once), which is not what this test is about.
    await eventually(lambda: _unfinished(db, "test.record"), lambda n: n == 0)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        await asyncio.sleep(1.5)
    assert not task.done()
    await enqueue("test.record", {"value": "after the outage"})
    await eventually(lambda: runs(db, "record"), lambda r: r == ["first", "after the outage"])
    assert not task.done()
    worker.stop()
    await task
    await worker_db.close()


async def _unfinished(db: Database, name: str) -> int:
    async with db.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE name = $1 AND state IN ('available', 'running')",
            name,
        )
    return count


async def _listening(services: Services) -> bool:
    return services.notifier.connected


async def _started(worker: Worker) -> bool:
    return worker.maintenance.rounds > 0


# --- real worker processes ---------------------------------------------------------------


async def test_a_killed_worker_loses_nothing(db: Database, database_url: str) -> None:
    job_id = await enqueue("test.long", {"marker": "k"})
    assert job_id is not None
    doomed = await worker_process(database_url)
    await eventually(lambda: runs(db, "long.started"), lambda r: r == ["k"], within=20)
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    assert (await job_row(db, job_id))["state"] == "running"  # its lease still holds
    async with db.acquire() as conn:  # make the rescued run quick to observe
        await conn.execute('UPDATE jobs SET args = \'{"marker": "k2"}\' WHERE id = $1', job_id)
    rescuer = await worker_process(database_url)
    await eventually(lambda: runs(db, "long.started"), lambda r: r == ["k", "k2"], within=20)
    row = await job_row(db, job_id)
    assert row["attempt"] == 2
    assert "lease expired" in row["errors"][0]["error"]
    rescuer.send_signal(signal.SIGTERM)
    await finish(rescuer)


async def test_two_workers_never_run_the_same_job(db: Database, database_url: str) -> None:
    # A lease long enough that a CPU-starved test machine never lets one lapse: a lapsed
    # lease is rescued and re-run by design (handlers must be idempotent), which is what
    # the SIGKILL test covers, not this one.
    async with db.acquire() as conn:
        await conn.execute(
            "CREATE UNIQUE INDEX test_unique_runs ON test_job_runs (value) WHERE kind = 'unique'"
        )
    await enqueue_many("test.unique_run", [{"n": n} for n in range(300)])
    workers = [
        await worker_process(database_url, "--burst", JOBS_LEASE_SECONDS="10") for _ in range(2)
    ]
    for process in workers:
        await finish(process)
    assert len(await runs(db, "unique")) == 300
    async with db.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM jobs WHERE name = 'test.unique_run'")
    assert left == 0  # every success recorded, and deleted (JOBS_KEEP_SUCCEEDED is off)


async def test_a_lone_burst_worker_runs_due_periodic_jobs(
    db: Database, make_settings: Callable[..., Settings], services: Services
) -> None:
    # Successes kept, so that the table shows which jobs ran.
    await worker_for(
        services, make_settings(**JOB_SETTINGS, jobs_keep_succeeded=True), burst=True
    ).run()
    assert len(await runs(db, "periodic")) == 1
    async with db.acquire() as conn:
        names = {
            r["name"] for r in await conn.fetch("SELECT name FROM jobs WHERE state = 'succeeded'")
        }
    assert {"pgfirst.prune_jobs", "pgfirst.maintain_activity_partitions"} <= names


async def test_a_periodic_job_runs_once_per_slot_across_workers(
    db: Database, services: Services
) -> None:
    # Workers at once, then one more, all in the same minute (the clock is pinned): the
    # slot is run once. A minute later it is due again.
    minute = datetime(2026, 12, 2, 9, 30, 15, tzinfo=UTC)
    await asyncio.gather(*(drain(services, clock=lambda: minute) for _ in range(3)))
    assert len(await runs(db, "periodic")) == 1
    await drain(services, clock=lambda: minute.replace(second=59))
    assert len(await runs(db, "periodic")) == 1
    await drain(services, clock=lambda: minute.replace(minute=31))
    assert len(await runs(db, "periodic")) == 2


# --- ops ---------------------------------------------------------------------------------


async def test_ops_report_and_actions(
    make_settings: Callable[..., Settings], services: Services
) -> None:
    app = create_app(
        make_settings(ops_token="ops-secret", jobs_modules=["tests.jobs_fixtures"], **JOB_SETTINGS)
    )
    headers = {"Authorization": "Bearer ops-secret"}
    dead_before = finished_total("dead")
    async with app.router.lifespan_context(app):
        async with app.state.services.db.acquire() as conn:
            await conn.execute(fixtures.SCHEMA)
        dead = await enqueue("test.fail")
        waiting = await enqueue("test.record", {"value": "w"}, delay=3600)
        async with app.state.services.db.acquire() as conn:
            await conn.execute(
                "UPDATE jobs SET state = 'dead', attempt = 3, finished_at = now(), "
                'errors = \'[{"error": "boom"}]\' WHERE id = $1',
                dead,
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/ops/jobs")).status_code == 401
            report = (await client.get("/ops/jobs", headers=headers)).json()
            assert report["counts"]["default"] == {"dead": 1, "available": 1}
            assert report["dead"][0]["last_error"] == "boom"
            assert (
                await client.post(f"/ops/jobs/{dead}/retry", headers=headers)
            ).status_code == 202
            assert (
                await client.post(f"/ops/jobs/{dead}/retry", headers=headers)
            ).status_code == 409
            assert (
                await client.post(f"/ops/jobs/{waiting}/cancel", headers=headers)
            ).status_code == 202
            assert (await client.post("/ops/jobs/abc/cancel", headers=headers)).status_code == 422
            # The retried job fails its one extra attempt: dead again, and counted.
            await Worker(app.state.services.jobs, burst=True).run()
            assert (await job_row(app.state.services.db, dead))["state"] == "dead"
            assert finished_total("dead") == dead_before + 1
            text = (await client.get("/metrics")).text
    assert f'jobs_finished_total{{outcome="dead"}} {dead_before + 1}' in text


def finished_total(outcome: str) -> float:
    return REGISTRY.get_sample_value("jobs_finished_total", {"outcome": outcome}) or 0.0
