"""What the job tests share: quick settings, services with the test job kinds, row readers,
in-process and subprocess workers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import tests.jobs_fixtures as fixtures
from app.config import Settings
from app.db import Database
from app.jobs import Jobs
from app.jobs.worker import Worker
from app.services import Services, open_services

# Short leases and polls so that rescue, heartbeats and retries happen within a test.
JOB_SETTINGS: dict[str, Any] = {
    "jobs_poll_interval": 0.1,
    "jobs_lease_seconds": 1.5,
    "jobs_backoff_base": 0.01,
    "jobs_shutdown_grace": 0.2,
}


@asynccontextmanager
async def job_services(settings: Settings) -> AsyncIterator[Services]:
    """Services that know the test job kinds, with their bookkeeping table created."""
    async with open_services(settings, job_modules=["tests.jobs_fixtures"]) as opened:
        async with opened.db.acquire() as conn:
            await conn.execute(fixtures.SCHEMA)
        yield opened


def worker_for(services: Services, settings: Settings, **options: Any) -> Worker:
    """A worker on the open services' database and jobs, with its own settings."""
    jobs = Jobs(services.db, settings, services.jobs.registry, services.notifier)
    return Worker(jobs, **options)


async def drain(services: Services, concurrency: int | None = None, **options: Any) -> None:
    await Worker(services.jobs, burst=True, concurrency=concurrency, **options).run()


async def runs(db: Database, kind: str) -> list[str]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT value FROM test_job_runs WHERE kind = $1 ORDER BY id", kind)
    return [row["value"] for row in rows]


async def job_row(db: Database, job_id: int) -> dict[str, Any]:
    async with db.acquire() as conn:
        row = await conn.fetchrow("SELECT *, state::text AS state FROM jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row)


async def worker_process(database_url: str, *extra: str, **env: str) -> asyncio.subprocess.Process:
    """``app worker --import tests.jobs_fixtures`` in a subprocess, stderr piped."""
    environment = {
        **os.environ,
        "ENV": "test",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "JOBS_POLL_INTERVAL": "0.1",
        "JOBS_LEASE_SECONDS": "1.5",
        "JOBS_BACKOFF_BASE": "0.01",
        **env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--import",
        "tests.jobs_fixtures",
        *extra,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> str:
    """Wait for a worker process to exit with 0; its stderr."""
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return stderr.decode()


async def read_until(process: asyncio.subprocess.Process, text: str, within: float = 30) -> str:
    """Read the process's stderr line by line until one contains ``text``; that line."""
    assert process.stderr is not None
    async with asyncio.timeout(within):
        while True:
            line = (await process.stderr.readline()).decode()
            if not line:
                raise AssertionError(f"the process exited before logging {text!r}")
            if text in line:
                return line
