import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from app.db.backup import BackupError, backup, restore


async def test_backup_then_restore_brings_the_rows_back(
    database_url: str, create_database: Callable[..., object], tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    await conn.execute("INSERT INTO notes VALUES (1, 'keep me'), (2, 'and me')")
    await conn.close()

    dump = await asyncio.to_thread(backup, database_url, tmp_path / "app.dump")
    assert dump.stat().st_size > 0

    target: str = await create_database()  # type: ignore[misc]
    await asyncio.to_thread(restore, target, dump)
    conn = await asyncpg.connect(target)
    try:
        rows = await conn.fetch("SELECT body FROM notes ORDER BY id")
        assert [row["body"] for row in rows] == ["keep me", "and me"]
        assert await conn.fetchval("SELECT version_num FROM alembic_version") is not None
    finally:
        await conn.close()


async def test_restore_of_a_missing_file_fails_clearly(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no such dump"):
        await asyncio.to_thread(restore, database_url, tmp_path / "absent.dump")


async def test_a_failed_restore_changes_nothing(database_url: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(b"PGDMP not really a dump")
    with pytest.raises(BackupError):
        await asyncio.to_thread(restore, database_url, garbage)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname='vector'") == 1
    finally:
        await conn.close()
