"""The production image, built and run: `app migrate`, `app serve` and `app worker` in containers.

One image (the project's Dockerfile on a locally made Debian base, tests/image_support.py)
runs three containers against an empty database of the test server: a one-off
``app migrate``, then the web process (the image's default command) and a worker, with
ENV=production as on a real host. Needs podman, runc and debootstrap (scripts/test installs
them as root); a missing one fails the module, never skips it.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.db.migrate import head_revision
from tests.auth_helpers import new_user
from tests.conftest import TEST_SECRET_KEY, dsn_for
from tests.helpers import eventually, free_port
from tests.image_support import (
    IMAGE,
    Podman,
    missing_tools,
    reachable_from_containers,
    write_containers_conf,
)


@dataclass(frozen=True)
class Deployment:
    podman: Podman
    web: str
    worker: str
    url: str
    dsn: str


@pytest.fixture(scope="module")
async def deployment(pg_admin_dsn: str, pg_admin: asyncpg.Connection) -> AsyncIterator[Deployment]:
    """The image built, an empty database migrated by it, web and worker containers up."""
    if missing := missing_tools():
        pytest.fail(
            f"the image test needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    database = f"image_{uuid.uuid4().hex[:12]}"
    await pg_admin.execute(f'CREATE DATABASE "{database}"')
    run_id = uuid.uuid4().hex[:8]
    label = f"pgfirst-test={run_id}"
    web, worker = (f"pgfirst-test-{role}-{run_id}" for role in ("web", "worker"))
    try:
        with tempfile.TemporaryDirectory(prefix="pgfirst-podman-") as conf_dir:
            podman = Podman(write_containers_conf(Path(conf_dir)))
            await podman.ensure_base_image()
            await podman.build_image()
            with reachable_from_containers(dsn_for(pg_admin_dsn, database)) as dsn:
                port = free_port()
                options = ["--network", "host", "--label", label]
                for key, value in _production_env(dsn, port).items():
                    options += ["--env", f"{key}={value}"]
                try:
                    await podman("run", "--rm", *options, IMAGE, "app", "migrate")
                    await podman("run", "--detach", "--name", web, *options, IMAGE)
                    await podman(
                        "run", "--detach", "--name", worker, *options, IMAGE, "app", "worker"
                    )
                    url = f"http://127.0.0.1:{port}"
                    await _wait_ready(podman, web, url)
                    yield Deployment(podman, web, worker, url, dsn_for(pg_admin_dsn, database))
                finally:
                    # Stopped while the database is still reachable: a graceful shutdown.
                    await podman.succeeds("rm", "--force", "--time", "15", web, worker)
                    left = await podman("ps", "--all", "--quiet", "--filter", f"label={label}")
    finally:
        await pg_admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert left.strip() == "", f"containers left behind: {left}"


def _production_env(dsn: str, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "SECRET_KEY": TEST_SECRET_KEY,
        "PORT": str(port),
        "PUBLIC_URL": "https://pgfirst.example",
        # No SMTP server here: verification mails fail and retry; the test does not read them.
        "MAILER": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(free_port()),
        "SMTP_STARTTLS": "false",
        "JOBS_INLINE_WORKER": "false",
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }


async def _wait_ready(podman: Podman, name: str, url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:

        async def ready() -> bool:
            if not await podman.running(name):
                raise AssertionError(f"{name} exited:\n{await podman.logs(name)}")
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        try:
            await eventually(ready, within=60, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{name} logs:\n{await podman.logs(name)}") from None


async def test_migrate_in_a_container_brings_an_empty_database_to_head(
    deployment: Deployment,
) -> None:
    conn = await asyncpg.connect(deployment.dsn)
    try:
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    assert version == head_revision()


async def test_web_container_answers_health_and_readiness(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, ready.status_code) == (200, 200)


async def test_signup_and_task_round_trip_through_the_web_container(
    deployment: Deployment,
) -> None:
    async with httpx.AsyncClient(base_url=deployment.url) as client:
        headers = await new_user(client, f"round-trip-{uuid.uuid4().hex[:8]}@example.com")
        created = await client.post("/api/tasks", json={"title": "ship it"}, headers=headers)
        assert created.status_code == 201, created.text
        fetched = await client.get(f"/api/tasks/{created.json()['id']}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json()["title"] == "ship it"


async def test_worker_container_runs_the_jobs_the_web_container_enqueues(
    deployment: Deployment,
) -> None:
    async with httpx.AsyncClient(base_url=deployment.url) as client:
        headers = await new_user(client, f"worker-{uuid.uuid4().hex[:8]}@example.com")
        created = await client.post("/api/tasks", json={"title": "embed me"}, headers=headers)
        assert created.status_code == 201, created.text
    conn = await asyncpg.connect(deployment.dsn)
    try:

        async def embedded() -> bool:
            sql = "SELECT embedded_at IS NOT NULL FROM tasks WHERE id = $1"
            return bool(await conn.fetchval(sql, created.json()["id"]))

        try:
            await eventually(embedded, within=30, interval=0.1)
        except AssertionError as exc:
            logs = await deployment.podman.logs(deployment.worker)
            raise AssertionError(f"{exc}\nworker logs:\n{logs}") from None
    finally:
        await conn.close()


@pytest.mark.parametrize("role", ["web", "worker"])
async def test_container_processes_run_as_a_non_root_user(
    deployment: Deployment, role: str
) -> None:
    name = deployment.web if role == "web" else deployment.worker
    pid = (await deployment.podman("inspect", "--format", "{{.State.Pid}}", name)).strip()
    # Rootful podman maps no user namespace: the host sees the container's own uid.
    status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
    real, effective, *_ = next(
        line for line in status.splitlines() if line.startswith("Uid:")
    ).split()[1:]
    assert "0" not in (real, effective), f"{name} runs as uid {real}/{effective}"


async def test_image_holds_no_local_state(deployment: Deployment) -> None:
    listing = await deployment.podman("run", "--rm", "--network", "none", IMAGE, "ls", "-A", "/app")
    assert set(listing.split()) == {
        ".venv",
        "README.md",
        "app",
        "migrations",
        "pyproject.toml",
        "uv.lock",
    }


async def test_web_and_worker_exit_cleanly_on_sigterm(deployment: Deployment) -> None:
    # Last in this module: it stops the containers. Fly and Docker stop with SIGTERM, and the
    # app is PID 1 in the container, where only signals it handles itself have any effect.
    podman = deployment.podman
    await podman("stop", "--time", "30", deployment.web, deployment.worker)
    codes = await podman(
        "inspect", "--format", "{{.State.ExitCode}}", deployment.web, deployment.worker
    )
    assert codes.split() == ["0", "0"]
