"""A cached session state is never served after the session ends: logout, logout-all and a
password change move the user's session generation on, so every request after them reads
the database — on both cache backends, with the state cached for an hour."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.auth_helpers import PASSWORD, login, new_user
from tests.helpers import flushed_redis


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest.fixture(params=["postgres", "redis"])
async def cached_client(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    overrides: dict[str, object] = {
        "cache_backend": request.param,
        "cache_auth_ttl_seconds": 3600,
        "cache_l1_ttl_seconds": 3600,
    }
    if request.param == "redis":
        overrides["redis_url"] = await flushed_redis(request.getfixturevalue("redis_url"))
    app = create_app(make_settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def me(client: httpx.AsyncClient, tokens: dict[str, str]) -> int:
    return (await client.get("/api/auth/me", headers=bearer(tokens))).status_code


async def test_the_session_state_is_served_from_the_cache(
    cached_client: httpx.AsyncClient, db_conn: asyncpg.Connection
) -> None:
    """What the other tests rely on: without the generation, a stale answer would show."""
    await new_user(cached_client, "cached@example.com")
    tokens = await login(cached_client, "cached@example.com")
    assert await me(cached_client, tokens) == 200
    await db_conn.execute("UPDATE refresh_tokens SET revoked_at = now()")
    assert await me(cached_client, tokens) == 200


async def test_logout_ends_a_cached_session_at_once(cached_client: httpx.AsyncClient) -> None:
    await new_user(cached_client, "out@example.com")
    tokens = await login(cached_client, "out@example.com")
    assert await me(cached_client, tokens) == 200
    response = await cached_client.post("/api/auth/logout", headers=bearer(tokens))
    assert response.status_code == 204
    assert await me(cached_client, tokens) == 401


async def test_logout_all_ends_every_cached_session_at_once(
    cached_client: httpx.AsyncClient,
) -> None:
    await new_user(cached_client, "all@example.com")
    laptop = await login(cached_client, "all@example.com")
    phone = await login(cached_client, "all@example.com")
    assert [await me(cached_client, laptop), await me(cached_client, phone)] == [200, 200]
    response = await cached_client.post("/api/auth/logout-all", headers=bearer(laptop))
    assert response.status_code == 204
    assert [await me(cached_client, laptop), await me(cached_client, phone)] == [401, 401]


async def test_a_password_change_ends_every_cached_session_at_once(
    cached_client: httpx.AsyncClient,
) -> None:
    await new_user(cached_client, "change@example.com")
    laptop = await login(cached_client, "change@example.com")
    phone = await login(cached_client, "change@example.com")
    assert [await me(cached_client, laptop), await me(cached_client, phone)] == [200, 200]
    body = {"current_password": PASSWORD, "new_password": "Changed-pass-99"}
    response = await cached_client.post("/api/auth/password", json=body, headers=bearer(laptop))
    assert response.status_code == 204
    assert [await me(cached_client, laptop), await me(cached_client, phone)] == [401, 401]


async def test_a_cached_session_state_lives_at_most_the_auth_ttl(
    make_settings: Callable[..., Settings], db_conn: asyncpg.Connection
) -> None:
    app = create_app(make_settings(cache_backend="postgres", cache_auth_ttl_seconds=3600))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await new_user(client, "ttl@example.com")
            assert await me(client, await login(client, "ttl@example.com")) == 200
    lifetime = await db_conn.fetchval(
        "SELECT extract(epoch FROM expires_at - written_at)::float8 FROM cache_entries"
        " WHERE key LIKE 'auth:%' AND key NOT LIKE 'auth:gen:%'"
    )
    # Shortened by up to a fifth, at random: states cached together expire apart.
    assert 0.8 * 3600 - 1 <= lifetime <= 3600
