import asyncio
from collections.abc import Callable

import asyncpg

from app.db import migrate
from tests.helpers import run_cli


async def _extensions(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT extname FROM pg_extension")
        return {row["extname"] for row in rows}
    finally:
        await conn.close()


async def _revision(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate.current_revision(conn)
    finally:
        await conn.close()


async def test_migrations_go_up_down_and_up_again(create_database: Callable[..., object]) -> None:
    dsn: str = await create_database()  # type: ignore[misc]
    assert await _revision(dsn) is None

    await asyncio.to_thread(migrate.upgrade, dsn)
    assert await _revision(dsn) == migrate.head_revision()
    assert {"vector", "pg_trgm", "pg_stat_statements"} <= await _extensions(dsn)

    await asyncio.to_thread(migrate.downgrade, dsn, "base")
    assert await _revision(dsn) is None
    assert not {"vector", "pg_trgm"} & await _extensions(dsn)

    await asyncio.to_thread(migrate.upgrade, dsn)
    assert await _revision(dsn) == migrate.head_revision()


async def _app_migrate(dsn: str) -> int:
    code, stderr = await run_cli("migrate", DATABASE_URL=dsn)
    assert code == 0, stderr
    return code


async def test_two_processes_migrating_at_once_take_turns(
    create_database: Callable[..., object],
) -> None:
    dsn: str = await create_database()  # type: ignore[misc]
    assert await asyncio.gather(_app_migrate(dsn), _app_migrate(dsn)) == [0, 0]
    assert await _revision(dsn) == migrate.head_revision()


def test_every_revision_chains_to_one_head() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused"))
    assert len(scripts.get_heads()) == 1
    revisions = list(scripts.walk_revisions())
    assert revisions[-1].down_revision is None
