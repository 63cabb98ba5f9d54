"""The API keeps its own contract: schemathesis against /openapi.json of a running `app serve`.

Every operation but the event stream (SSE does not end) is called with generated input,
authenticated, and each response is checked: no 5xx, a status the operation documents, the
content type it documents, a body that matches the documented schema. Routes that end the
caller's session (logout, logout-all, password change) get a fresh account per call, so
they do not log the other operations out; /ops routes get OPS_TOKEN. The seed is fixed
and the example budget small, so the run is the same every time and fits in CI.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import load_settings
from app.main import create_app
from tests.conftest import TEST_SECRET_KEY, dsn_for
from tests.helpers import free_port

OPS_TOKEN = "contract-ops-token-" + "x" * 16
PASSWORD = "correct horse battery staple"
ENDS_SESSION = {
    ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/logout-all"),
    ("POST", "/api/auth/password"),
}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _run(coroutine: Any) -> Any:
    # Fixtures here are synchronous (schemathesis calls are); asyncpg needs a loop of its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def api_url(pg_admin_dsn: str, template_database: str) -> Iterator[str]:
    name = f"contract_{uuid.uuid4().hex[:12]}"
    _run(_admin(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    port = free_port()
    env = {
        **os.environ,
        "ENV": "test",
        "DATABASE_URL": dsn_for(pg_admin_dsn, name),
        "SECRET_KEY": TEST_SECRET_KEY,
        "OPS_TOKEN": OPS_TOKEN,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "JOBS_INLINE_WORKER": "false",
        "MAILER": "memory",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "1024",
        # The generator signs up and logs in far more often than a person would.
        **{
            f"RATE_LIMIT_{action}_PER_{kind}": "1000000"
            for action in ("LOGIN", "SIGNUP", "RESET")
            for kind in ("IP", "EMAIL")
        },
    }
    # A file, not a pipe: a pipe nobody reads would block the server once it fills.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, server, log)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=20)
            _run(_admin(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"app serve exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("app serve did not answer /healthz within 30 s")


def _account(url: str) -> dict[str, str]:
    """Sign up a new user and log in: its bearer header."""
    email = f"contract-{uuid.uuid4().hex[:12]}@example.com"
    with httpx.Client(base_url=url, timeout=10) as client:
        client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
        login = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


@pytest.fixture(scope="module")
def user_headers(api_url: str) -> dict[str, str]:
    return _account(api_url)


def _document() -> dict[str, Any]:
    # The document the app builds; a test below checks the server serves exactly this one.
    return create_app(load_settings(env="test", database_url="postgresql://unused/x")).openapi()


schema = schemathesis.openapi.from_dict(_document()).exclude(path="/api/events")


@schema.parametrize()
@settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_its_contract(
    case: Any, api_url: str, user_headers: dict[str, str]
) -> None:
    key = (case.method.upper(), case.path)
    if case.path.startswith("/ops/"):
        headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
    elif key in ENDS_SESSION:
        headers = _account(api_url)
    else:
        headers = user_headers
    case.call_and_validate(base_url=api_url, headers=headers, checks=CHECKS)


def test_the_server_serves_the_document_tested_here(api_url: str) -> None:
    assert httpx.get(f"{api_url}/openapi.json", timeout=10).json() == _document()


def test_the_document_declares_the_bearer_scheme() -> None:
    document = _document()
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from POST /api/auth/login; on /ops routes, OPS_TOKEN too.",
    }
    assert {"HTTPBearer": []} in document["paths"]["/api/tasks"]["get"]["security"]
