"""Rate limits on signup, login and reset — the same tests on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.auth_helpers import PASSWORD, new_user
from tests.helpers import eventually, flushed_redis


@pytest.fixture(params=["postgres", "redis"])
async def limited_client(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    overrides: dict[str, object] = {
        "rate_limit_backend": request.param,
        "rate_limit_login_per_email": 3,
        "rate_limit_login_per_ip": 5,
        "rate_limit_reset_per_email": 2,
        "rate_limit_signup_per_email": 2,
        "rate_limit_window_seconds": 3600,
        "trusted_proxy_header": "x-client-ip",
    }
    if request.param == "redis":
        overrides["redis_url"] = await flushed_redis(request.getfixturevalue("redis_url"))
    app = create_app(make_settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def test_login_is_limited_per_email_with_retry_after(
    limited_client: httpx.AsyncClient,
) -> None:
    await new_user(limited_client, "rl@example.com")  # one login
    body = {"email": "rl@example.com", "password": "Wrong-pass-123"}
    statuses = [
        (await limited_client.post("/api/auth/login", json=body)).status_code for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    blocked = await limited_client.post(
        "/api/auth/login", json={"email": "rl@example.com", "password": PASSWORD}
    )
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 3600
    assert blocked.json() == {"detail": "Too many attempts; try again later"}


async def test_login_is_limited_per_ip(limited_client: httpx.AsyncClient) -> None:
    statuses = [
        (
            await limited_client.post(
                "/api/auth/login", json={"email": f"u{n}@example.com", "password": "Wrong-pass-123"}
            )
        ).status_code
        for n in range(6)
    ]
    assert statuses == [401] * 5 + [429]


async def test_reset_is_limited_per_email(limited_client: httpx.AsyncClient) -> None:
    statuses = [
        (
            await limited_client.post("/api/auth/password-reset", json={"email": "who@example.com"})
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]


async def test_signup_is_limited_per_email_across_addresses_and_mails_stop(
    limited_client: httpx.AsyncClient,
) -> None:
    body = {"email": "target@example.com", "password": PASSWORD}
    answers = [
        await limited_client.post(
            "/api/auth/signup", json=body, headers={"x-client-ip": f"198.51.100.{n}"}
        )
        for n in range(1, 5)
    ]
    assert [a.status_code for a in answers] == [202, 202, 429, 429]
    assert 0 < int(answers[-1].headers["retry-after"]) <= 3600
    # One verification mail, then one "someone tried to sign up" notice; nothing after.
    app = limited_client.app  # type: ignore[attr-defined]
    async with app.state.services.db.acquire() as conn:
        mails = await conn.fetchval("SELECT count(*) FROM jobs WHERE name = 'pgfirst.send_email'")
    assert mails == 2


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_limits_recover_when_the_window_passes(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest, backend: str
) -> None:
    overrides: dict[str, object] = {"rate_limit_backend": backend}
    if backend == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    app = create_app(make_settings(**overrides))
    async with app.router.lifespan_context(app):
        limiter = app.state.services.rate_limiter
        key = f"recover:{backend}"
        assert (await limiter.hit(key, 1, 1)).allowed
        blocked = await limiter.hit(key, 1, 1)
        assert not blocked.allowed
        assert blocked.retry_after <= 2

        async def allowed_again() -> bool:
            return bool((await limiter.hit(key, 1, 1)).allowed)

        await eventually(allowed_again, within=5, interval=0.2)


async def test_postgres_counters_are_pruned(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        limiter = app.state.services.rate_limiter
        await limiter.hit("old", 5, 60)
        async with app.state.services.db.acquire() as conn:
            await conn.execute("UPDATE rate_limits SET window_start = now() - interval '2 days'")
        await limiter.hit("fresh", 5, 60)
        assert await limiter.prune(86_400) == 1


async def test_trusted_proxy_header_keys_the_client(make_settings: Callable[..., Settings]) -> None:
    app = create_app(
        make_settings(trusted_proxy_header="fly-client-ip", rate_limit_signup_per_ip=1)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"email": "a@example.com", "password": PASSWORD}
            one = await client.post(
                "/api/auth/signup", json=body, headers={"Fly-Client-IP": "203.0.113.1"}
            )
            other = await client.post(
                "/api/auth/signup", json=body, headers={"Fly-Client-IP": "203.0.113.2"}
            )
            again = await client.post(
                "/api/auth/signup", json=body, headers={"Fly-Client-IP": "203.0.113.1"}
            )
    assert (one.status_code, other.status_code, again.status_code) == (202, 202, 429)
