"""`app users create-admin EMAIL`: the first admin, or an existing account made admin."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from app.config import Settings
from app.services import open_services
from tests.auth_helpers import PASSWORD
from tests.helpers import run_cli

ADMIN_PASSWORD = "Boss-password-42"


async def create_admin(database_url: str, email: str, password: str) -> tuple[int, str]:
    return await run_cli(
        "users", "create-admin", email, DATABASE_URL=database_url, ADMIN_PASSWORD=password
    )


async def test_create_admin_creates_a_verified_admin(
    database_url: str, db_conn: asyncpg.Connection
) -> None:
    code, stderr = await create_admin(database_url, " Boss@Example.com ", ADMIN_PASSWORD)
    assert code == 0, stderr
    assert "created admin boss@example.com" in stderr
    row = await db_conn.fetchrow(
        "SELECT is_admin, email_verified_at FROM users WHERE email = 'boss@example.com'"
    )
    assert row is not None
    assert row["is_admin"] is True
    assert row["email_verified_at"] is not None


async def test_create_admin_promotes_an_existing_account_and_keeps_its_password(
    database_url: str, db_conn: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    async with open_services(make_settings()) as services:
        assert await services.auth.signup("staff@example.com", PASSWORD) is not None
    before = await db_conn.fetchval(
        "SELECT password_hash FROM users WHERE email = 'staff@example.com'"
    )
    code, stderr = await create_admin(database_url, "staff@example.com", ADMIN_PASSWORD)
    assert code == 0, stderr
    assert "made admin staff@example.com" in stderr
    row = await db_conn.fetchrow(
        "SELECT is_admin, password_hash FROM users WHERE email = 'staff@example.com'"
    )
    assert row is not None
    assert row["is_admin"] is True
    assert row["password_hash"] == before


@pytest.mark.parametrize(
    ("email", "password", "reason"),
    [
        ("not-an-address", ADMIN_PASSWORD, "not an email address"),
        ("boss@example.com", "short1A", "at least 10"),
        ("boss@example.com", "Password123", "too common"),
    ],
    ids=["bad-address", "short-password", "common-password"],
)
async def test_create_admin_refuses_bad_input_with_exit_2_and_the_reason(
    database_url: str, db_conn: asyncpg.Connection, email: str, password: str, reason: str
) -> None:
    code, stderr = await create_admin(database_url, email, password)
    assert code == 2
    assert reason in stderr
    assert await db_conn.fetchval("SELECT count(*) FROM users") == 0
