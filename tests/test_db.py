import asyncpg
import pytest

from app.cache import cache
from app.config import Settings
from app.current import ServicesNotOpen
from app.db import Database
from app.jobs import enqueue
from app.pubsub import publish
from app.services import open_services
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


async def test_a_script_opens_services_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ENV", "test")
    async with open_services() as services:
        async with services.db.acquire() as conn:
            assert await conn.fetchval("SELECT current_database()") == database_name(database_url)
        assert await enqueue("test.anything", {}) is not None
    with pytest.raises(ServicesNotOpen, match="open_services"):
        await enqueue("test.anything", {})
    with pytest.raises(ServicesNotOpen, match="open_services"):
        await publish("news", {"n": 1})
    with pytest.raises(ServicesNotOpen, match="open_services"):
        await cache.get("key")


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
