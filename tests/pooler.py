"""PgBouncer in transaction mode in front of the test server, started once per run.

``pgbouncer`` is a session fixture (a ``LocalPgBouncer``, ``app.db.embedded_pgbouncer``):
``pgbouncer.dsn(name)`` reaches database ``name`` of the test server through the pooler,
with ``auth_type = any`` and ``* =`` so every per-test database passes through. The suite's
pooler mode (PGFIRST_TEST_MODE=pooler, tests/conftest.py) points every test's app at it;
tests/test_pgbouncer.py uses it directly. Debian 12 ships PgBouncer 1.18: no
``max_prepared_statements``, so the app runs with asyncpg's statement cache off. With CI=true
a missing pgbouncer fails the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.embedded_pgbouncer import LocalPgBouncer, PgBouncerError, pgbouncer_executable

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pgbouncer_installed() -> None:
    """Fail (CI) or skip (elsewhere) a test that needs pgbouncer when it is missing."""
    try:
        pgbouncer_executable()
    except PgBouncerError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pgbouncer(pg_admin_dsn: str) -> Iterator[LocalPgBouncer]:
    pgbouncer_installed()
    run_dir = Path(tempfile.mkdtemp(prefix="pgfirst-pgbouncer-"))
    bouncer = LocalPgBouncer(run_dir, server_dsn=pg_admin_dsn)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
