import asyncio
import os
import sys
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.helpers import run_cli

runner = CliRunner()


def test_db_url_prints_the_configured_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://user@db.internal/app")
    result = runner.invoke(cli, ["db", "url"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "postgresql://user@db.internal/app"


def test_signals_is_the_scaling_advisor() -> None:
    result = runner.invoke(cli, ["signals", "--help"])
    assert result.exit_code == 0
    assert "scaling advisor" in result.stdout


async def test_invalid_settings_exit_2_with_the_reason() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "db",
        "url",
        env={**os.environ, "CACHE_BACKEND": "memcached"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"CACHE_BACKEND" in stderr
    assert b"Traceback" not in stderr


async def test_migrate_brings_a_new_database_to_head(
    create_database: Callable[..., object],
) -> None:
    dsn: str = await create_database()  # type: ignore[misc]
    code, stderr = await run_cli("migrate", DATABASE_URL=dsn)
    assert code == 0
    assert "migrated to head" in stderr


async def test_activity_maintain_creates_partitions(database_url: str) -> None:
    import asyncpg

    code, stderr = await run_cli("activity", "maintain", DATABASE_URL=database_url)
    assert code == 0, stderr
    assert "created ['activity_logs_p" in stderr
    conn = await asyncpg.connect(database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'activity_logs'::regclass"
        )
    finally:
        await conn.close()
    assert count == 5  # DEFAULT + the current month + 3 ahead
