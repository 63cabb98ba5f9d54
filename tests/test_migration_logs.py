"""`app migrate` logs alembic's progress through the app's logging, JSON included."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from tests.helpers import run_cli


async def test_migrate_with_json_logs_prints_alembic_progress_as_json(
    create_database: Callable[[], Awaitable[str]],
) -> None:
    dsn = await create_database()  # empty: every revision runs

    code, stderr = await run_cli("migrate", DATABASE_URL=dsn, LOG_FORMAT="json", LOG_LEVEL="INFO")

    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    # The one line that is not a log line: the CLI's own closing message.
    log_lines = [line for line in lines if "migrated to" not in line]
    entries = [json.loads(line) for line in log_lines]  # fails on any non-JSON log line
    upgrades = [entry for entry in entries if entry["msg"].startswith("Running upgrade")]
    assert upgrades, stderr
    assert all(entry["logger"].startswith("alembic") for entry in upgrades)
    assert all(entry["level"] == "info" for entry in upgrades)
    assert not any("INFO  [alembic" in line or "INFO alembic" in line for line in lines)
