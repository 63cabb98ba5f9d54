"""Spent refresh and one-time tokens are pruned a day after they expire, in batches, while
every token that can still be presented stays — reuse detection included."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
import pytest

from app.auth.jobs import token_jobs
from app.auth.service import Auth
from app.config import Settings
from app.services import Services, open_services
from tests.auth_helpers import PASSWORD

# expires_at relative to the database's now(): past the one-day grace, inside it, live.
LONG_EXPIRED = -timedelta(days=2)
JUST_EXPIRED = -timedelta(hours=1)
LIVE = timedelta(days=1)


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with open_services(make_settings()) as opened:
        yield opened


@pytest.fixture
async def user_id(services: Services) -> int:
    created = await services.auth.signup("keep@example.com", PASSWORD)
    assert created is not None
    return created


async def add_refresh(
    conn: asyncpg.Connection, user_id: int, expires_in: timedelta, *, used: bool = False
) -> bytes:
    token_hash = secrets.token_bytes(32)
    await conn.execute(
        """
        INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at, used_at)
        VALUES ($1, gen_random_uuid(), $2, now() + $3,
                CASE WHEN $4 THEN now() - interval '3 days' END)
        """,
        user_id,
        token_hash,
        expires_in,
        used,
    )
    return token_hash


async def add_one_time(
    conn: asyncpg.Connection, user_id: int, expires_in: timedelta, *, used: bool = False
) -> bytes:
    token_hash = secrets.token_bytes(32)
    await conn.execute(
        """
        INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at, used_at)
        VALUES ($1, $2, 'password_reset', now() + $3, CASE WHEN $4 THEN now() END)
        """,
        token_hash,
        user_id,
        expires_in,
        used,
    )
    return token_hash


async def remaining(conn: asyncpg.Connection, table: str) -> set[bytes]:
    return {row[0] for row in await conn.fetch(f"SELECT token_hash FROM {table}")}


async def test_refresh_tokens_go_a_day_past_expiry_and_the_rest_stay(
    services: Services, user_id: int, db_conn: asyncpg.Connection
) -> None:
    await add_refresh(db_conn, user_id, LONG_EXPIRED, used=True)
    recent = await add_refresh(db_conn, user_id, JUST_EXPIRED)
    used_live = await add_refresh(db_conn, user_id, LIVE, used=True)
    live = await add_refresh(db_conn, user_id, LIVE)
    await services.auth.prune_tokens()
    assert await remaining(db_conn, "refresh_tokens") == {recent, used_live, live}


async def test_one_time_tokens_go_a_day_past_expiry_and_the_rest_stay(
    services: Services, user_id: int, db_conn: asyncpg.Connection
) -> None:
    before = await remaining(db_conn, "one_time_tokens")  # the signup's verification token
    await add_one_time(db_conn, user_id, LONG_EXPIRED)
    await add_one_time(db_conn, user_id, LONG_EXPIRED, used=True)
    recent = await add_one_time(db_conn, user_id, JUST_EXPIRED)
    used_live = await add_one_time(db_conn, user_id, LIVE, used=True)
    await services.auth.prune_tokens()
    assert await remaining(db_conn, "one_time_tokens") == before | {recent, used_live}


async def test_pruning_works_through_a_backlog_in_batches(
    services: Services, user_id: int, db_conn: asyncpg.Connection
) -> None:
    for _ in range(5):
        await add_refresh(db_conn, user_id, LONG_EXPIRED)
        await add_one_time(db_conn, user_id, LONG_EXPIRED)
    live = await add_refresh(db_conn, user_id, LIVE)
    assert await services.auth.prune_tokens(batch=2) == 10
    assert await remaining(db_conn, "refresh_tokens") == {live}


async def test_a_used_token_still_revokes_its_family_after_pruning(services: Services) -> None:
    auth: Auth = services.auth
    await auth.signup("reuse@example.com", PASSWORD)
    first = await auth.login("reuse@example.com", PASSWORD)
    assert first is not None
    second = await auth.refresh(first.refresh_token)
    assert second is not None
    await auth.prune_tokens()
    assert await auth.refresh(first.refresh_token) is None  # replayed: the family is revoked
    assert await auth.refresh(second.refresh_token) is None


async def test_the_prune_tokens_job_runs_hourly_and_prunes(
    services: Services, user_id: int, db_conn: asyncpg.Connection
) -> None:
    (kind,) = token_jobs(services.auth)
    assert kind.name == "pgfirst.prune_tokens"
    assert kind.cron is not None
    assert (len(kind.cron.minutes), len(kind.cron.hours)) == (1, 24)  # once an hour
    await add_refresh(db_conn, user_id, LONG_EXPIRED)
    await kind.handler()
    assert await remaining(db_conn, "refresh_tokens") == set()
