"""Helpers for tests that need users: sign up, read mail, log in."""

from __future__ import annotations

import re

import httpx

from app.auth.mail import MemoryMailer, Message
from tests.helpers import eventually

PASSWORD = "correct-Horse-9"


async def deliver_mail(app: object) -> None:
    """Run the queued email jobs (tests run no worker inside the app)."""
    from app.jobs.worker import Worker

    state = app.state  # type: ignore[attr-defined]
    await Worker(state.services.jobs, queues=["mail"], burst=True).run()


async def mail_to(email: str, subject_part: str, app: object) -> Message:
    """The newest message to ``email`` whose subject contains ``subject_part``."""
    await deliver_mail(app)

    async def find() -> Message | None:
        for message in reversed(MemoryMailer.outbox):
            if message.to == email and subject_part in message.subject:
                return message
        return None

    found = await eventually(find, lambda m: m is not None, within=5)
    assert found is not None
    return found


def token_in(message: Message) -> str:
    match = re.search(r"Token: (\S+)", message.body)
    assert match, message.body
    return match.group(1)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def new_user(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Sign up and log in; returns Authorization headers."""
    response = await client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    tokens = await login(client, email)
    return {"Authorization": f"Bearer {tokens['access_token']}"}
