import asyncio

import asyncpg
import pytest

import app.db as db_module
from app.config import Settings, forget_settings
from app.db import Database
from tests.conftest import database_name


@pytest.fixture
async def database(settings: Settings) -> Database:
    db = await Database.connect(settings, settings.database_url)
    yield db  # type: ignore[misc]
    await db.close()


async def test_transaction_commits_on_success(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v jsonb)")
        await conn.execute("INSERT INTO kv VALUES ('a', $1)", {"n": 1})
    async with database.acquire() as conn:
        assert await conn.fetchval("SELECT v FROM kv WHERE k = 'a'") == {"n": 1}


async def test_transaction_rolls_back_on_error(database: Database) -> None:
    async with database.acquire() as conn:
        await conn.execute("CREATE TABLE kv (k text PRIMARY KEY)")

    async def insert_then_fail() -> None:
        async with database.transaction() as conn:
            await conn.execute("INSERT INTO kv VALUES ('lost')")
            raise RuntimeError("business rule failed")

    with pytest.raises(RuntimeError):
        await insert_then_fail()
    async with database.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM kv") == 0


async def test_json_and_vector_codecs_round_trip(database: Database) -> None:
    async with database.acquire() as conn:
        document = {"nested": [1, 2.5, "x", None], "ok": True}
        assert await conn.fetchval("SELECT $1::jsonb", document) == document
        assert await conn.fetchval("SELECT $1::json", document) == document
        vector = await conn.fetchval("SELECT $1::vector(3)", [1.0, 2.0, 3.5])
        assert vector.to_list() == [1.0, 2.0, 3.5]


async def test_reads_use_the_primary_without_replicas(database: Database) -> None:
    async with database.acquire(read=True) as conn:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")


async def test_pool_stats_count_connections_in_use(database: Database) -> None:
    async with database.acquire(), database.acquire():
        primary = database.stats()[0]
        assert primary.role == "primary"
        assert primary.in_use == 2
        assert primary.max_size == 5
    assert database.stats()[0].in_use == 0


async def test_direct_connection_is_outside_the_pool(database: Database) -> None:
    conn = await database.connect_direct()
    try:
        await conn.execute("LISTEN pgfirst_test")
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 1
    finally:
        await conn.close()
    assert database.stats()[0].in_use == 0


async def test_pgbouncer_mode_disables_the_statement_cache(
    make_settings: object, database_url: str
) -> None:
    settings = make_settings(db_pool_mode="pgbouncer")  # type: ignore[operator]
    db = await Database.connect(settings, database_url)
    try:
        async with db.acquire() as conn:
            for _ in range(3):
                await conn.fetchval("SELECT 1")
            raw: asyncpg.Connection = conn._con  # type: ignore[union-attr]
            assert raw._stmt_cache.get_max_size() == 0
    finally:
        await db.close()


async def test_script_gets_a_database_lazily_from_settings(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ENV", "test")
    forget_settings()
    db_module.set_database(None)
    try:
        first, second = await asyncio.gather(db_module.get_database(), db_module.get_database())
        assert first is second
        async with first.acquire() as conn:
            assert await conn.fetchval("SELECT current_database()") == database_name(database_url)
    finally:
        await db_module.close_database()
        forget_settings()


async def test_after_commit_hooks_run_only_after_commit(database: Database) -> None:
    ran: list[str] = []

    async def record(label: str) -> None:
        ran.append(label)

    async with database.transaction() as conn:
        assert database.after_commit(conn, lambda: record("committed"))
        assert ran == []
    assert ran == ["committed"]

    async def fail_after_registering() -> None:
        async with database.transaction() as conn:
            database.after_commit(conn, lambda: record("rolled back"))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await fail_after_registering()
    assert ran == ["committed"]

    async with database.acquire() as conn:
        assert database.after_commit(conn, lambda: record("outside")) is False
