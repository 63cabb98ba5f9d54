"""/api/events and /api/ws: auth, isolation, and delivery across two app processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.auth_helpers import new_user
from tests.helpers import app_process, eventually, live_server
from tests.test_streams import read_sse


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[str]:
    async with app.router.lifespan_context(app), live_server(app) as base_url:
        yield base_url


async def subscribers(app: FastAPI) -> int:
    return sum(len(s) for s in app.state.services.broker.fanout._by_channel.values())


async def test_events_need_authentication(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        assert (await client.get("/api/events")).status_code == 401
        assert (await client.get("/api/events?ticket=forged")).status_code == 401


async def test_users_receive_only_their_own_events(server: str, app: FastAPI) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        alice = await new_user(client, "alice@example.com")
        bob = await new_user(client, "bob@example.com")
        async with client.stream("GET", "/api/events", headers=bob) as bobs_stream:
            async with client.stream("GET", "/api/events", headers=alice) as alices_stream:
                await eventually(lambda: subscribers(app), lambda n: n == 2)
                created = (
                    await client.post("/api/tasks", json={"title": "a"}, headers=alice)
                ).json()
                await client.post("/api/tasks", json={"title": "b"}, headers=bob)
                events = await asyncio.wait_for(read_sse(alices_stream, 1), 5)
            bobs_events = await asyncio.wait_for(read_sse(bobs_stream, 1), 5)
    assert events[0]["event"] == "task.created"
    assert orjson.loads(events[0]["data"])["id"] == created["id"]
    assert orjson.loads(bobs_events[0]["data"])["id"] != created["id"]


async def test_browser_ticket_opens_the_stream_and_resumes(server: str, app: FastAPI) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        alice = await new_user(client, "carol@example.com")
        first = (await client.post("/api/tasks", json={"title": "1"}, headers=alice)).json()
        await client.patch(f"/api/tasks/{first['id']}", json={"completed": True}, headers=alice)
        ticket = (await client.post("/api/events/ticket", headers=alice)).json()["ticket"]
        async with client.stream(
            "GET", f"/api/events?ticket={ticket}", headers={"Last-Event-ID": "0"}
        ) as stream:
            events = await asyncio.wait_for(read_sse(stream, 2), 5)
    assert [e["event"] for e in events] == ["task.created", "task.completed"]


async def test_websocket_needs_auth_and_carries_events(server: str, app: FastAPI) -> None:
    ws_url = server.replace("http://", "ws://") + "/api/ws"
    with pytest.raises((ConnectionClosed, InvalidStatus)):  # refused before accept: 403
        async with connect(ws_url) as socket:
            await asyncio.wait_for(socket.recv(), 5)
    async with httpx.AsyncClient(base_url=server) as client:
        alice = await new_user(client, "dave@example.com")
        ticket = (await client.post("/api/events/ticket", headers=alice)).json()["ticket"]
        async with connect(f"{ws_url}?ticket={ticket}") as socket:
            await eventually(lambda: subscribers(app))
            task = (await client.post("/api/tasks", json={"title": "ws"}, headers=alice)).json()
            message = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
    assert message["event"] == "task.created"
    assert message["data"]["id"] == task["id"]


async def test_an_event_from_one_instance_reaches_a_client_of_another(database_url: str) -> None:
    async with (
        app_process(database_url) as a,
        app_process(database_url) as b,
        httpx.AsyncClient(base_url=a) as on_a,
        httpx.AsyncClient(base_url=b) as on_b,
    ):
        headers = await new_user(on_a, "multi@example.com")
        async with on_b.stream("GET", "/api/events", headers=headers) as stream:
            # the subscription is registered before the response starts streaming
            created = (
                await on_a.post("/api/tasks", json={"title": "from A"}, headers=headers)
            ).json()
            events = await asyncio.wait_for(read_sse(stream, 1), 10)
    assert orjson.loads(events[0]["data"])["id"] == created["id"]
