"""Per-user data versions: bumped with the write's own transaction, read through an
in-process copy that a NOTIFY (or the writer's own commit) drops, and that is trusted only
while the notifier is connected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db import Database
from app.main import create_app
from app.notifier import Notifier
from app.notifier.postgres import PostgresNotifier
from app.tasks.caching import TOPIC, DataVersions
from tests.auth_helpers import new_user
from tests.helpers import eventually


class RolledBack(Exception):
    pass


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def owner(db_conn: asyncpg.Connection) -> int:
    return await db_conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO users (email, password_hash) VALUES ('owner@example.com', 'x') RETURNING id"
    )


def notifier_on(dsn: str, opened: list[asyncpg.Connection] | None = None) -> PostgresNotifier:
    """A LISTEN notifier on ``dsn``; the connections it opens go to ``opened``."""

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        if opened is not None:
            opened.append(conn)
        return conn

    return PostgresNotifier(connect)


@asynccontextmanager
async def data_versions(db: Database, notifier: Notifier) -> AsyncIterator[DataVersions]:
    await notifier.start()
    versions = DataVersions(db, notifier)
    await versions.start()
    try:
        yield versions
    finally:
        await versions.stop()
        await notifier.stop()


async def set_version_silently(db_conn: asyncpg.Connection, user_id: int, version: int) -> None:
    """Change the stored version without the NOTIFY a bump sends."""
    await db_conn.execute(
        "INSERT INTO user_data_versions (user_id, version) VALUES ($1, $2) "
        "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version",
        user_id,
        version,
    )


# --- DataVersions ------------------------------------------------------------------------


async def test_a_bump_counts_only_once_its_transaction_commits(
    db: Database, database_url: str, owner: int
) -> None:
    async with data_versions(db, notifier_on(database_url)) as versions:

        async def bump_then_roll_back() -> None:
            async with db.transaction() as conn:
                assert await versions.bump(conn, owner) == 1
                raise RolledBack

        assert await versions.read(owner) == 0
        with pytest.raises(RolledBack):
            await bump_then_roll_back()
        assert await versions.read(owner) == 0
        async with db.transaction() as conn:
            await versions.bump(conn, owner)
        assert await versions.read(owner) == 1


async def test_reads_come_from_the_copy_until_a_notification_drops_it(
    db: Database, database_url: str, db_conn: asyncpg.Connection, owner: int
) -> None:
    async with data_versions(db, notifier_on(database_url)) as versions:
        assert await versions.read(owner) == 0
        await set_version_silently(db_conn, owner, 7)
        assert await versions.read(owner) == 0  # the copy: Postgres was not asked
        await db_conn.execute("SELECT pg_notify($1, $2)", TOPIC, str(owner))
        assert await eventually(lambda: versions.read(owner), lambda seen: seen == 7)


async def test_the_writer_drops_its_copy_at_commit_without_waiting_for_the_notification(
    db: Database, create_database: Callable[..., Any], owner: int
) -> None:
    # Connected, but LISTENing on another database: no notification ever arrives.
    deaf = notifier_on(await create_database())
    async with data_versions(db, deaf) as writer:
        bystander = DataVersions(db, deaf)
        await bystander.start()
        assert (await writer.read(owner), await bystander.read(owner)) == (0, 0)
        async with db.transaction() as conn:
            await writer.bump(conn, owner)
        assert await writer.read(owner) == 1
        assert await bystander.read(owner) == 0  # what the drop spared the writer
        await bystander.stop()


async def test_without_a_connected_notifier_every_read_goes_to_postgres(
    db: Database, db_conn: asyncpg.Connection, owner: int
) -> None:
    polling = PostgresNotifier(None)  # behind PgBouncer without a direct URL
    async with data_versions(db, polling) as versions:
        assert await versions.read(owner) == 0
        await set_version_silently(db_conn, owner, 7)
        assert await versions.read(owner) == 7
        assert versions.cached_users == 0


async def test_a_lost_notifier_connection_empties_the_copy(
    db: Database, database_url: str, db_conn: asyncpg.Connection, owner: int
) -> None:
    opened: list[asyncpg.Connection] = []
    notifier = notifier_on(database_url, opened)
    states: list[bool] = []
    notifier.on_state(states.append)
    async with data_versions(db, notifier) as versions:
        assert await versions.read(owner) == 0
        await set_version_silently(db_conn, owner, 7)  # sent while nobody listens, in effect
        await db_conn.execute("SELECT pg_terminate_backend($1)", opened[-1].get_server_pid())

        async def reconnected() -> bool:
            return states[-2:] == [False, True]

        await eventually(reconnected)
        assert await versions.read(owner) == 7


# --- over HTTP ---------------------------------------------------------------------------


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@asynccontextmanager
async def cache_entries_locked(dsn: str) -> AsyncIterator[None]:
    """The Postgres cache's table locked: every cache call waits, then times out."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE cache_entries IN ACCESS EXCLUSIVE MODE")
            yield

            # Release only once every statement that queued on the lock has been given up
            # (a write that ran after the release would hide the failure).
            async def nobody_waits() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT NOT EXISTS (SELECT FROM pg_locks "
                        "WHERE relation = 'cache_entries'::regclass AND NOT granted)"
                    )
                )

            await eventually(nobody_waits)
    finally:
        await conn.close()


async def test_changed_data_is_never_answered_304_when_the_cache_cannot_be_written(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    app = create_app(make_settings(cache_timeout_seconds=0.2))
    async with served(app) as client:
        alice = await new_user(client, "alice@example.com")
        created = await client.post("/api/tasks", json={"title": "Pay rent"}, headers=alice)
        task_url = f"/api/tasks/{created.json()['id']}"
        listed = await client.get("/api/tasks", headers=alice)
        one = await client.get(task_url, headers=alice)

        async with cache_entries_locked(database_url):
            patched = await client.patch(task_url, json={"title": "Paid"}, headers=alice)
            assert patched.status_code == 200

        relisted = await client.get(
            "/api/tasks", headers={**alice, "If-None-Match": listed.headers["etag"]}
        )
        assert relisted.status_code == 200
        assert [t["title"] for t in relisted.json()["items"]] == ["Paid"]
        again = await client.get(task_url, headers={**alice, "If-None-Match": one.headers["etag"]})
        assert again.status_code == 200
        assert again.json()["title"] == "Paid"


async def test_a_write_through_another_app_instance_changes_the_etag(
    settings: Settings,
) -> None:
    async with served(create_app(settings)) as first, served(create_app(settings)) as second:
        alice = await new_user(first, "alice@example.com")
        created = await first.post("/api/tasks", json={"title": "Pay rent"}, headers=alice)
        task_url = f"/api/tasks/{created.json()['id']}"
        etag = (await first.get(task_url, headers=alice)).headers["etag"]
        unchanged = await first.get(task_url, headers={**alice, "If-None-Match": etag})
        assert unchanged.status_code == 304

        await second.patch(task_url, json={"completed": True}, headers=alice)

        async def revalidated() -> httpx.Response:
            return await first.get(task_url, headers={**alice, "If-None-Match": etag})

        changed = await eventually(revalidated, lambda r: r.status_code == 200, within=3)
        assert changed.json()["completed"] is True
        assert changed.headers["etag"] != etag
