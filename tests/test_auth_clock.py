"""Access tokens and the end of sessions are timed by one clock, the app's: a database whose
clock is off by half a minute changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import jwt
import pytest

from app.auth.service import Auth
from app.config import Settings
from app.services import open_services
from tests.auth_helpers import PASSWORD


@pytest.fixture(params=[-30.0, 30.0], ids=["app-behind-db", "app-ahead-of-db"])
async def skewed_auth(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[Auth]:
    """Auth whose clock is ``param`` seconds off the database server's."""
    skew: float = request.param
    async with open_services(make_settings()) as s:
        yield Auth(s.settings, s.db, s.passwords, s.cache, s.jobs, clock=lambda: time.time() + skew)


async def access_token_of(auth: Auth, email: str) -> str:
    session = await auth.login(email, PASSWORD)
    assert session is not None
    return session.access_token


async def accepted(auth: Auth, token: str) -> bool:
    """What every request asks: does the token's session still stand? (The signature and
    expiry are checked by the caller against the same clock; not the concern here.)"""
    claims = jwt.decode(token, options={"verify_signature": False})
    user = await auth.user_for_token(int(claims["sub"]), uuid.UUID(claims["fam"]), claims["iat"])
    return user is not None


async def test_a_token_issued_right_after_signup_is_accepted(skewed_auth: Auth) -> None:
    await skewed_auth.signup("new@example.com", PASSWORD)
    assert await accepted(skewed_auth, await access_token_of(skewed_auth, "new@example.com"))


async def test_logout_all_refuses_tokens_issued_before_it_and_accepts_later_ones(
    skewed_auth: Auth,
) -> None:
    user_id = await skewed_auth.signup("skew@example.com", PASSWORD)
    assert user_id is not None
    before = await access_token_of(skewed_auth, "skew@example.com")
    await skewed_auth.logout_all(user_id)
    after = await access_token_of(skewed_auth, "skew@example.com")
    assert not await accepted(skewed_auth, before)
    assert await accepted(skewed_auth, after)


async def test_a_token_issued_after_a_password_change_is_accepted(skewed_auth: Auth) -> None:
    user_id = await skewed_auth.signup("change@example.com", PASSWORD)
    assert user_id is not None
    assert await skewed_auth.change_password(user_id, PASSWORD, "Changed-pass-99")
    session = await skewed_auth.login("change@example.com", "Changed-pass-99")
    assert session is not None
    assert await accepted(skewed_auth, session.access_token)


async def test_a_token_issued_in_the_millisecond_of_a_logout_all_counts_as_before_it(
    make_settings: Callable[..., Settings],
) -> None:
    # Past the middle of a millisecond: an iat rounded to nearest would land after it.
    frozen = (int(time.time() * 1000) + 0.6) / 1000
    async with open_services(make_settings()) as s:
        auth = Auth(s.settings, s.db, s.passwords, s.cache, s.jobs, clock=lambda: frozen)
        user_id = await auth.signup("same@example.com", PASSWORD)
        assert user_id is not None
        await auth.logout_all(user_id)
        assert not await accepted(auth, await access_token_of(auth, "same@example.com"))
