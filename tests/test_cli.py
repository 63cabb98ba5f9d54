import asyncio
import os
import sys
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from app.cli import cli

runner = CliRunner()


def test_db_url_prints_the_configured_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://user@db.internal/app")
    get_settings.cache_clear()
    try:
        result = runner.invoke(cli, ["db", "url"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert result.stdout.strip() == "postgresql://user@db.internal/app"


def test_worker_says_it_is_not_available_yet() -> None:
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code == 2


def test_signals_says_it_is_a_placeholder() -> None:
    result = runner.invoke(cli, ["signals", "--help"])
    assert result.exit_code == 0
    assert "Placeholder" in result.stdout


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
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "migrate",
        env={**os.environ, "DATABASE_URL": dsn, "ENV": "test"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0
    assert b"migrated to head" in stderr
