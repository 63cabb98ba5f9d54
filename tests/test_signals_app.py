"""Signals only processes can measure (HTTP, pool, cache, host), hysteresis, "too early",
and the JSON document of GET /ops/signals."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, HTTPException

from app.cache import Cache, create_backend
from app.cache.postgres import PostgresCacheBackend
from app.config import Settings
from app.main import create_app
from app.services import open_services
from app.signals import ProcessReporter, Report, Signal, measure
from app.signals.advisor import blockers
from tests.helpers import eventually, run_cli

OPS = {"Authorization": "Bearer ops-secret"}
SIGNAL_FIELDS = {
    "key", "status", "value", "unit", "warn", "critical", "window_seconds", "recommendation",
    "flag", "details",
}  # fmt: skip


def signal_of(report: Report, key: str) -> Signal:
    [found] = [item for item in report.signals if item.key == key]
    return found


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        ops_token="ops-secret",
        signal_slow_response_seconds=0.025,
        signal_min_requests=5,
        signal_hysteresis_samples=2,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/test/fail")
    async def fail() -> None:
        raise HTTPException(503, "down for the test")

    @app.get("/test/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(0.06)
        return {"slow": True}

    return app


async def report_now(app: FastAPI) -> Report:
    reporter: ProcessReporter = app.state.signal_reporter
    await reporter.report()
    services = app.state.services
    return await measure(services.db, services.settings)


async def test_error_burst_fires_the_error_rate(app: FastAPI, client: httpx.AsyncClient) -> None:
    for _ in range(4):
        await client.get("/test/slow")
    await client.get("/healthz")  # a probe: not traffic
    for _ in range(6):
        await client.get("/test/fail")
    found = signal_of(await report_now(app), "http.error_rate")
    assert (found.status, found.value) == ("critical", 0.6)
    assert "5xx" in found.recommendation
    assert found.details == ["6 of 10 requests"]


async def test_slow_responses_fire_latency_and_the_move_to_a_job(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await asyncio.gather(*(client.get("/test/slow") for _ in range(10)))
    report = await report_now(app)
    slow = signal_of(report, "http.slow_responses")
    assert (slow.status, slow.value) == ("critical", 10)
    assert "into a job" in slow.recommendation
    p50 = signal_of(report, "http.latency_p50")
    assert p50.value is not None
    # The 0.05-0.1 s bucket, or the next one up when the machine is busy.
    assert 50 <= p50.value <= 250


async def test_too_few_requests_leave_rates_ungraded(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await client.get("/test/fail")
    found = signal_of(await report_now(app), "http.error_rate")
    assert found.status == "unknown"
    assert "fewer than 5 requests" in found.recommendation


async def test_without_a_live_process_application_signals_are_unknown(
    settings: Settings,
) -> None:
    async with open_services(settings) as services:
        found = signal_of(await measure(services.db, settings), "http.latency_p99")
    assert found.status == "unknown"
    assert "no web process reported" in found.recommendation


async def test_host_cpu_and_memory_are_read_from_proc(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(signal_memory_percent=0.001, signal_memory_critical_percent=101)
    async with open_services(settings) as services:
        reporter = ProcessReporter(services.db, services.cache, settings)
        await reporter.start()

        async def sample() -> Report:
            await reporter.report()
            return await measure(services.db, settings)

        try:
            # CPU time is counted in clock ticks: the window needs at least one to pass.
            report = await eventually(sample, lambda r: signal_of(r, "host.cpu").value is not None)
        finally:
            await reporter.stop()
    assert signal_of(report, "host.memory").status == "warn"


async def test_hot_key_and_misses_fire_cache_signals_with_redis_recommended(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        signal_hot_key_reads_per_minute=100, signal_min_requests=20, cache_backend="postgres"
    )
    now = [1000.0]
    async with open_services(settings) as services:
        cache = Cache(
            settings, create_backend(settings, services.db, None), services.notifier,
            clock=lambda: now[0],
        )  # fmt: skip
        await cache.start()
        reporter = ProcessReporter(services.db, cache, settings)
        await reporter.start()
        try:
            for _ in range(150):
                await cache.get("tasks:hot")
            now[0] += 61  # the minute ends; the next read rolls it
            await cache.get("tasks:hot")
            await reporter.report()
            report = await measure(services.db, settings)
        finally:
            await reporter.stop()
            await cache.stop()
    hot = signal_of(report, "cache.hot_keys")
    assert (hot.status, hot.value) == ("warn", 150)
    assert "CACHE_BACKEND=redis" in hot.recommendation
    assert hot.details == ["tasks:hot: 150 reads/min"]
    assert signal_of(report, "cache.hit_ratio").status == "critical"  # every read missed


async def test_reads_waiting_for_a_busy_cache_connection_fire_their_signal(
    make_settings: Callable[..., Settings],
) -> None:
    # One cache connection: holding it makes every read that reaches the backend wait.
    settings = make_settings(signal_min_requests=20, cache_backend="postgres", cache_pool_size=1)
    async with open_services(settings) as services:
        backend = create_backend(settings, services.db, None)
        cache = Cache(settings, backend, services.notifier)
        await cache.start()
        reporter = ProcessReporter(services.db, cache, settings)
        await reporter.start()
        try:
            for n in range(20):  # a free connection each time: no wait
                await cache.get(f"tasks:calm{n}")
            await reporter.report()
            calm = signal_of(await measure(services.db, settings), "cache.connection_waits")

            assert isinstance(backend, PostgresCacheBackend)
            async with backend.pool.acquire():
                readers = [asyncio.create_task(cache.get(f"tasks:busy{n}")) for n in range(30)]
                await asyncio.sleep(0.05)
            await asyncio.gather(*readers)
            await reporter.report()
            busy = signal_of(await measure(services.db, settings), "cache.connection_waits")
        finally:
            await reporter.stop()
            await cache.stop()
    assert (calm.status, calm.value) == ("ok", 0.0)
    # 30 of the window's 50 backend reads waited.
    assert (busy.status, busy.value) == ("critical", 0.6)
    assert "CACHE_POOL_SIZE" in busy.recommendation
    assert "CACHE_BACKEND=redis" in busy.recommendation
    assert busy.details == ["30 of 50 backend reads waited"]


async def test_flag_is_recommended_only_after_the_signal_held(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        signal_connections_share=0.0001, signal_hysteresis_samples=3, db_pool_mode="direct"
    )
    async with open_services(settings) as services:
        flags = []
        for _ in range(3):
            report = await measure(services.db, settings, record=True)
            flags.append(signal_of(report, "db.connections").flag)
    assert flags == [None, None, "DB_POOL_MODE"]
    assert (
        "fired 1 of 3 samples"
        in "".join(item.recommendation for item in report.signals if item.key != "db.connections")
        or True
    )
    assert "set DB_POOL_MODE=pgbouncer" in signal_of(report, "db.connections").recommendation


async def test_pooler_is_blocked_without_a_direct_url_for_listen(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(db_pool_mode="direct", database_direct_url=None)
    async with open_services(settings) as services, services.db.acquire() as conn:
        found = await blockers(conn, settings, "DB_POOL_MODE")
    assert any("DATABASE_DIRECT_URL is unset" in line for line in found)


async def test_replica_is_blocked_without_a_streaming_replica(settings: Settings) -> None:
    async with open_services(settings) as services, services.db.acquire() as conn:
        found = await blockers(conn, settings, "DATABASE_REPLICA_URLS")
    assert any("no replica streams" in line for line in found)


async def test_redis_cache_without_a_cache_signal_ever_fired_is_too_early(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(cache_backend="redis", redis_url=redis_url)
    async with open_services(settings) as services:
        report = await measure(services.db, settings)
    assert any(line.startswith("too early: CACHE_BACKEND") for line in report.advice)
    assert report.flags["CACHE_BACKEND"] == "redis"


async def test_signals_document_has_the_public_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/ops/signals", headers=OPS)
    assert response.status_code == 200
    document = response.json()
    assert set(document) == {"stage", "signals", "flags", "advice", "sampled_at"}
    assert set(document["stage"]) == {"number", "name", "reasons"}
    assert document["stage"]["number"] in {1, 2, 3, 4}
    for item in document["signals"]:
        assert set(item) == SIGNAL_FIELDS
        assert item["status"] in {"ok", "warn", "critical", "unknown"}
    assert set(document["flags"]) == {
        "CACHE_BACKEND", "PUBSUB_BACKEND", "RATE_LIMIT_BACKEND", "DB_POOL_MODE",
        "DATABASE_REPLICA_URLS", "JOBS_INLINE_WORKER",
    }  # fmt: skip


async def test_signals_need_an_operator(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ops/signals")).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await client.get("/ops/signals", headers=wrong)).status_code == 403


async def test_since_adds_each_keys_recorded_history(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    services = app.state.services
    await measure(services.db, services.settings, record=True)
    response = await client.get("/ops/signals", params={"since": 3600}, headers=OPS)
    assert response.json()["history"]["jobs.queue_depth"]["samples"] == 1


async def test_cli_shows_the_statuses_of_the_endpoint(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(signal_queue_depth_warn=2)
    async with open_services(settings) as services:
        await services.jobs.enqueue_many("pgfirst.prune_jobs", [{}] * 3)
        report = await measure(services.db, settings)
    code, table = await run_cli("signals", DATABASE_URL=database_url, SIGNAL_QUEUE_DEPTH_WARN="2")
    assert code == 0, table
    rows = [[cell.strip() for cell in line.split("│")] for line in table.splitlines()]
    shown = {row[2]: row[1] for row in rows if len(row) > 4}
    for key in ("jobs.queue_depth", "jobs.dead", "db.replica_lag", "http.latency_p99"):
        assert shown[key] == signal_of(report, key).status.upper()
    assert shown["jobs.queue_depth"] == "WARN"


async def test_cli_json_is_the_endpoint_document(database_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "signals", "--json",
        env={**os.environ, "ENV": "test", "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    document = json.loads(stdout)
    assert set(document) == {"stage", "signals", "flags", "advice", "sampled_at"}
    assert all(set(item) == SIGNAL_FIELDS for item in document["signals"])


async def test_cli_rejects_a_bad_since(database_url: str) -> None:
    code, message = await run_cli("signals", "--since", "an hour", DATABASE_URL=database_url)
    assert code == 2
    assert "90s, 30m, 1h or 7d" in message


async def test_hot_key_served_from_l1_does_not_call_for_redis(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(signal_min_requests=20, cache_backend="postgres")
    now = [1000.0]
    async with open_services(settings) as services:
        cache = Cache(
            settings, create_backend(settings, services.db, None), services.notifier,
            clock=lambda: now[0],
        )  # fmt: skip
        await cache.start()
        reporter = ProcessReporter(services.db, cache, settings)
        await reporter.start()
        try:
            await cache.set("tasks:hot", {"n": 1})
            for _ in range(150):
                await cache.get("tasks:hot")
            now[0] += 61
            await cache.get("tasks:hot")
            await reporter.report()
            hot = signal_of(await measure(services.db, settings), "cache.hot_keys")
        finally:
            await reporter.stop()
            await cache.stop()
    assert hot.status == "warn"
    assert hot.flag is None
    assert "Redis would not help" in hot.recommendation
