"""Helpers for search tests: a small fixed corpus, the embedding job, the search call."""

from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI

from app.jobs.worker import Worker

CORPUS = [
    ("Invoice for ACME", "send the quarterly invoice before friday"),
    ("Weekly planning", "review the invoice pipeline and the budget"),
    ("Garden", "water the tomatoes and the roses"),
    ("Budget review", "prepare budget numbers for the board meeting"),
    ("Dentist appointment", "call the dentist about the <script>alert(1)</script> bill"),
    ("Quarterly report", "write the quarterly report draft"),
]


async def embed_all(client: httpx.AsyncClient) -> None:
    """Run the queued embedding jobs (tests run no worker inside the app)."""
    app: FastAPI = client._transport.app  # type: ignore[attr-defined]
    await Worker(app.state.services.jobs, queues=["search"], burst=True).run()


async def add_tasks(
    client: httpx.AsyncClient, headers: dict[str, str], tasks: list[tuple[str, str]]
) -> None:
    for title, body in tasks:
        response = await client.post(
            "/api/tasks", json={"title": title, "body": body}, headers=headers
        )
        assert response.status_code == 201
    await embed_all(client)


async def search(
    client: httpx.AsyncClient, headers: dict[str, str], q: str, mode: str = "fulltext"
) -> list[dict[str, object]]:
    response = await client.get("/api/search", params={"q": q, "mode": mode}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def titles(hits: list[dict[str, object]]) -> list[object]:
    return [hit["title"] for hit in hits]


async def user_id(db_conn: asyncpg.Connection, email: str) -> int:
    return await db_conn.fetchval("SELECT id FROM users WHERE email = $1", email)  # type: ignore[no-any-return]
