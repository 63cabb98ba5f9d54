"""Accounts, tokens, sessions, reset and verification — end to end over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest
from fastapi import FastAPI

from app.auth.mail import MemoryMailer
from app.auth.tokens import issue_access_token
from app.config import Settings
from tests.auth_helpers import PASSWORD, login, mail_to, new_user, token_in
from tests.conftest import TEST_SECRET_KEY


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_signup_then_login_then_me(client: httpx.AsyncClient) -> None:
    headers = await new_user(client, "  Ada@Example.COM ")
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert me.json()["email_verified"] is False


async def test_login_response_has_the_contract_shape(client: httpx.AsyncClient) -> None:
    await new_user(client, "shape@example.com")
    tokens = await login(client, "shape@example.com")
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900


async def test_signup_does_not_reveal_existing_accounts(client: httpx.AsyncClient) -> None:
    first = await client.post(
        "/api/auth/signup", json={"email": "x@example.com", "password": PASSWORD}
    )
    again = await client.post(
        "/api/auth/signup", json={"email": "X@example.com", "password": "Another-pass-1"}
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    warning = await mail_to("x@example.com", "tried to sign up", client._transport.app)
    assert "already exists" in warning.body
    # and the second signup did not change the password
    await login(client, "x@example.com")


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient) -> None:
    await new_user(client, "known@example.com")
    wrong = await client.post(
        "/api/auth/login", json={"email": "known@example.com", "password": "Wrong-pass-123"}
    )
    unknown = await client.post(
        "/api/auth/login", json={"email": "nobody@example.com", "password": "Wrong-pass-123"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1A", "at least 10"),
        ("alllowercaseletters", "two of"),
        ("1234567890", "two of"),
        ("Password123", "too common"),
        ("x" * 300 + "A", "at most"),
    ],
)
async def test_password_policy(client: httpx.AsyncClient, password: str, reason: str) -> None:
    if reason == "too common":
        from app.auth.passwords import common_passwords

        assert "password123" in common_passwords()
    response = await client.post(
        "/api/auth/signup", json={"email": "p@example.com", "password": password}
    )
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])


@pytest.mark.parametrize(
    "email", ["", "no-at-sign", "a@b", "two words@example.com", "x" * 300 + "@e.com"]
)
async def test_malformed_emails_are_422(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 422


async def test_expired_access_token_is_refused(client: httpx.AsyncClient, db_conn: object) -> None:
    await new_user(client, "exp@example.com")
    me = await client.get("/api/auth/me", headers=(await _headers(client, "exp@example.com")))
    user_id = me.json()["id"]
    expired = jwt.encode(
        {
            "sub": str(user_id),
            "fam": str(uuid.uuid4()),
            "iat": time.time() - 100,
            "exp": int(time.time()) - 10,
            "jti": "x",
            "typ": "access",
        },
        TEST_SECRET_KEY,
        algorithm="HS256",
    )
    response = await client.get("/api/auth/me", headers=bearer(expired))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def _headers(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    return bearer((await login(client, email))["access_token"])


async def test_forged_and_alg_none_tokens_are_refused(client: httpx.AsyncClient) -> None:
    await new_user(client, "forge@example.com")
    me = (
        await client.get("/api/auth/me", headers=await _headers(client, "forge@example.com"))
    ).json()
    claims = {
        "sub": str(me["id"]),
        "fam": str(uuid.uuid4()),
        "iat": time.time(),
        "exp": int(time.time()) + 600,
        "jti": "j",
        "typ": "access",
    }
    forged = jwt.encode(claims, "not-the-server-secret-key-at-all-0000", algorithm="HS256")
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    for token in (forged, unsigned, "garbage", "a.b.c"):
        assert (await client.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    await new_user(client, "rot@example.com")
    first = await login(client, "rot@example.com")
    second = (
        await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    third = (
        await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    ).json()
    assert (
        await client.get("/api/auth/me", headers=bearer(third["access_token"]))
    ).status_code == 200

    # the first token again: stolen → the whole family dies, current tokens included
    reuse = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    refused = await client.post("/api/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert refused.status_code == 401
    assert (
        await client.get("/api/auth/me", headers=bearer(third["access_token"]))
    ).status_code == 401


async def test_logout_ends_only_that_session(client: httpx.AsyncClient) -> None:
    await new_user(client, "out@example.com")
    laptop = await login(client, "out@example.com")
    phone = await login(client, "out@example.com")
    assert (
        await client.post("/api/auth/logout", headers=bearer(laptop["access_token"]))
    ).status_code == 204
    assert (
        await client.get("/api/auth/me", headers=bearer(laptop["access_token"]))
    ).status_code == 401
    assert (
        await client.post("/api/auth/refresh", json={"refresh_token": laptop["refresh_token"]})
    ).status_code == 401
    assert (
        await client.get("/api/auth/me", headers=bearer(phone["access_token"]))
    ).status_code == 200


async def test_logout_all_ends_every_session(client: httpx.AsyncClient) -> None:
    await new_user(client, "all@example.com")
    laptop = await login(client, "all@example.com")
    phone = await login(client, "all@example.com")
    assert (
        await client.post("/api/auth/logout-all", headers=bearer(laptop["access_token"]))
    ).status_code == 204
    for session in (laptop, phone):
        assert (
            await client.get("/api/auth/me", headers=bearer(session["access_token"]))
        ).status_code == 401
        assert (
            await client.post("/api/auth/refresh", json={"refresh_token": session["refresh_token"]})
        ).status_code == 401
    await login(client, "all@example.com")  # logging in again works


async def test_password_reset_end_to_end(client: httpx.AsyncClient) -> None:
    await new_user(client, "reset@example.com")
    old = await login(client, "reset@example.com")
    unknown = await client.post("/api/auth/password-reset", json={"email": "ghost@example.com"})
    known = await client.post("/api/auth/password-reset", json={"email": "reset@example.com"})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    token = token_in(await mail_to("reset@example.com", "Reset", client._transport.app))

    done = await client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "Brand-new-pass-7"}
    )
    assert done.status_code == 204
    again = await client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "Other-new-pass-7"}
    )
    assert again.status_code == 400  # single use
    assert (
        await client.get("/api/auth/me", headers=bearer(old["access_token"]))
    ).status_code == 401
    await login(client, "reset@example.com", "Brand-new-pass-7")
    assert not any(m.to == "ghost@example.com" for m in MemoryMailer.outbox)


async def test_expired_reset_token_is_refused(client: httpx.AsyncClient, db_conn: object) -> None:
    await new_user(client, "late@example.com")
    await client.post("/api/auth/password-reset", json={"email": "late@example.com"})
    token = token_in(await mail_to("late@example.com", "Reset", client._transport.app))
    await db_conn.execute("UPDATE one_time_tokens SET expires_at = now() - interval '1 second'")  # type: ignore[attr-defined]
    response = await client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "Brand-new-pass-7"}
    )
    assert response.status_code == 400


async def test_email_verification_end_to_end(client: httpx.AsyncClient) -> None:
    headers = await new_user(client, "verify@example.com")
    token = token_in(await mail_to("verify@example.com", "Confirm", client._transport.app))
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 204
    assert (await client.get("/api/auth/me", headers=headers)).json()["email_verified"] is True
    assert (
        await client.post("/api/auth/verify-email", json={"token": "made-up"})
    ).status_code == 400


async def test_password_change_revokes_every_session(client: httpx.AsyncClient) -> None:
    headers = await new_user(client, "change@example.com")
    body = {"current_password": "wrong-Password-1", "new_password": "Changed-pass-99"}
    assert (await client.post("/api/auth/password", json=body, headers=headers)).status_code == 403
    body["current_password"] = PASSWORD
    assert (await client.post("/api/auth/password", json=body, headers=headers)).status_code == 204
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 401
    await login(client, "change@example.com", "Changed-pass-99")


async def test_hash_is_upgraded_when_parameters_change(
    make_settings: Callable[..., Settings], database_url: str, db_conn: object
) -> None:
    from app.main import create_app

    async def run(app: FastAPI, action: Callable[[httpx.AsyncClient], object]) -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await action(c)  # type: ignore[misc]

    await run(create_app(make_settings()), lambda c: new_user(c, "up@example.com"))
    before = await db_conn.fetchval("SELECT password_hash FROM users")  # type: ignore[attr-defined]
    stronger = create_app(make_settings(argon2_time_cost=2))
    await run(stronger, lambda c: login(c, "up@example.com"))
    after = await db_conn.fetchval("SELECT password_hash FROM users")  # type: ignore[attr-defined]
    assert "t=1" in before
    assert "t=2" in after


async def test_stream_ticket_is_not_an_access_token(client: httpx.AsyncClient) -> None:
    headers = await new_user(client, "ticket@example.com")
    ticket = (await client.post("/api/events/ticket", headers=headers)).json()["ticket"]
    assert (await client.get("/api/auth/me", headers=bearer(ticket))).status_code == 401


def test_access_tokens_pin_their_algorithm() -> None:
    token = issue_access_token(TEST_SECRET_KEY, 1, uuid.uuid4(), 60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
