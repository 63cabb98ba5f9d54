"""`app migrate` checks what the migrations need from the server before running them, and
says in one line what is missing: extensions, the right to create them, the right to create
tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.db import migrate
from tests.helpers import free_port, run_cli


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
async def role(pg_admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role that is no superuser, as on a managed host."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    await pg_admin.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    await pg_admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
async def owned_database(
    pg_admin: asyncpg.Connection, pg_admin_dsn: str, role: str
) -> AsyncIterator[str]:
    """An empty database owned by ``role``; yields the admin's DSN to it."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    await pg_admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    parts = urlsplit(pg_admin_dsn)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def assert_one_line(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.strip().count("\n") == 0, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


async def test_a_role_that_may_not_create_vector_is_told_who_must(
    owned_database: str, role: str
) -> None:
    code, stderr = await run_cli("migrate", DATABASE_URL=as_role(owned_database, role))

    assert code == 2
    assert_one_line(stderr, f"role {role} may not create extension vector", "CREATE EXTENSION")
    assert "pg_trgm" not in stderr  # a trusted extension: the database owner may create it


async def test_the_same_role_migrates_once_an_administrator_created_vector(
    owned_database: str, role: str
) -> None:
    await execute(owned_database, "CREATE EXTENSION vector")

    code, stderr = await run_cli("migrate", DATABASE_URL=as_role(owned_database, role))

    assert code == 0, stderr


async def test_a_role_that_may_not_create_tables_is_told_the_grant(
    create_database: Callable[..., object], role: str
) -> None:
    dsn: str = await create_database()  # type: ignore[misc]
    await execute(
        dsn,
        "CREATE EXTENSION vector; CREATE EXTENSION pg_trgm; CREATE EXTENSION btree_gin; "
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    )

    code, stderr = await run_cli("migrate", DATABASE_URL=as_role(dsn, role))

    assert code == 2
    assert_one_line(stderr, f"GRANT CREATE ON SCHEMA public TO {role}")


async def test_an_extension_the_server_does_not_offer_is_named(database_url: str) -> None:
    with pytest.raises(migrate.DatabasePrerequisiteError, match="does not offer extension nope"):
        await asyncio.to_thread(migrate.check_prerequisites, database_url, {"nope": "nowhere"})


async def test_a_migrated_database_passes_the_check(database_url: str) -> None:
    await asyncio.to_thread(migrate.check_prerequisites, database_url)


async def test_an_unreachable_database_is_one_line() -> None:
    nowhere = f"postgresql://nobody@127.0.0.1:{free_port()}/app"

    code, stderr = await run_cli("migrate", DATABASE_URL=nowhere, COLUMNS="500")

    assert code == 2
    assert_one_line(stderr, "cannot connect to DATABASE_URL")
