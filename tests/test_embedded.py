import asyncio
import multiprocessing
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from app.db.embedded import EmbeddedPostgres


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgfirst-emb-"))
    try:
        yield base / "pg"
    finally:
        EmbeddedPostgres(base / "pg").destroy()
        shutil.rmtree(base, ignore_errors=True)


async def _server_identity(dsn: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        started = await conn.fetchval("SELECT pg_postmaster_start_time()::text")
        preload = await conn.fetchval("SHOW shared_preload_libraries")
        assert "pg_stat_statements" in preload
        return pid, started
    finally:
        await conn.close()


def _start_in_subprocess(data_dir: str, results: "multiprocessing.Queue[str]") -> None:
    results.put(EmbeddedPostgres(Path(data_dir), ephemeral=True).ensure_running())


async def test_second_launcher_reuses_the_running_server(cluster_dir: Path) -> None:
    first = await asyncio.to_thread(EmbeddedPostgres(cluster_dir, ephemeral=True).ensure_running)
    _, started_first = await _server_identity(first)
    again = EmbeddedPostgres(cluster_dir, ephemeral=True)
    second = await asyncio.to_thread(again.ensure_running)
    _, started_second = await _server_identity(second)
    assert first == second
    assert started_first == started_second  # same postmaster, not a restart
    assert await asyncio.to_thread(again.is_running)


async def test_two_processes_asking_at_once_share_one_server(cluster_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = context.Queue()
    workers = [
        context.Process(target=_start_in_subprocess, args=(str(cluster_dir), results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        await asyncio.to_thread(worker.join, 60)
        assert worker.exitcode == 0
    dsns = {results.get(timeout=5), results.get(timeout=5)}
    assert len(dsns) == 1
    await _server_identity(dsns.pop())


async def test_stop_stops_and_start_again_works(cluster_dir: Path) -> None:
    server = EmbeddedPostgres(cluster_dir, ephemeral=True)
    dsn = await asyncio.to_thread(server.ensure_running)
    assert await asyncio.to_thread(server.stop) is True
    assert await asyncio.to_thread(server.is_running) is False
    assert await asyncio.to_thread(server.stop) is False
    assert await asyncio.to_thread(server.ensure_running) == dsn
    await _server_identity(dsn)


async def test_changed_settings_restart_a_running_server(cluster_dir: Path) -> None:
    durable = EmbeddedPostgres(cluster_dir)
    dsn = await asyncio.to_thread(durable.ensure_running)
    _, started = await _server_identity(dsn)
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SHOW fsync") == "on"
    await conn.close()

    ephemeral = EmbeddedPostgres(cluster_dir, ephemeral=True)
    await asyncio.to_thread(ephemeral.ensure_running)
    _, restarted = await _server_identity(dsn)
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SHOW fsync") == "off"
    await conn.close()
    assert restarted != started
