"""SSE and WebSocket mechanics on a real uvicorn server (auth-free test routes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI, Header, WebSocket

from app.pubsub import publish
from app.pubsub.streams import open_sse, parse_event_id, run_websocket
from tests.helpers import eventually, live_server

CHANNEL = f"streamtest:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[str]:

    @app.get("/test/events")
    async def events(last_event_id: str | None = Header(None)) -> object:
        return await open_sse(
            app.state.services.broker, [CHANNEL], since=parse_event_id(last_event_id), heartbeat=0.2
        )

    @app.websocket("/test/ws")
    async def ws(websocket: WebSocket, since: str | None = None) -> None:
        await run_websocket(
            websocket,
            app.state.services.broker,
            [CHANNEL],
            since=parse_event_id(since),
            heartbeat=0.2,
        )

    async with app.router.lifespan_context(app), live_server(app) as base_url:
        yield base_url


async def read_sse(response: httpx.Response, count: int) -> list[dict[str, str]]:
    """Parse frames until ``count`` events (not comments/retry) arrived."""
    events: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in frame:
                events.append(frame)
                if len(events) == count:
                    return events
            frame = {}
            continue
        if line.startswith(":"):
            frame.setdefault("comments", "")
            frame["comments"] += line
            continue
        field, _, value = line.partition(": ")
        frame[field] = value
    return events


async def subscribers(app: FastAPI) -> int:
    return sum(len(s) for s in app.state.services.broker.fanout._by_channel.values())


async def test_sse_streams_events_with_ids_and_types(server: str, app: FastAPI) -> None:
    async with (
        httpx.AsyncClient(base_url=server) as client,
        client.stream("GET", "/test/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        await eventually(lambda: subscribers(app))
        first = await publish(CHANNEL, {"type": "task.created", "id": 1})
        await publish(CHANNEL, {"id": 2})
        events = await asyncio.wait_for(read_sse(response, 2), 5)
    assert events[0]["id"] == str(first)
    assert events[0]["event"] == "task.created"
    assert orjson.loads(events[0]["data"]) == {"type": "task.created", "id": 1}
    assert events[1]["event"] == "message"


async def test_sse_resumes_from_last_event_id(server: str) -> None:
    seen = await publish(CHANNEL, {"n": 1})
    await publish(CHANNEL, {"n": 2})
    await publish(CHANNEL, {"n": 3})
    headers = {"Last-Event-ID": str(seen)}
    async with (
        httpx.AsyncClient(base_url=server) as client,
        client.stream("GET", "/test/events", headers=headers) as response,
    ):
        events = await asyncio.wait_for(read_sse(response, 2), 5)
    assert [orjson.loads(e["data"])["n"] for e in events] == [2, 3]


async def test_sse_sends_heartbeats_when_idle(server: str) -> None:
    async with (
        httpx.AsyncClient(base_url=server) as client,
        client.stream("GET", "/test/events") as response,
    ):
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line == ": ping":
                break
    assert "retry: 3000" in lines
    assert ": ping" in lines


async def test_sse_disconnect_unsubscribes(server: str, app: FastAPI) -> None:
    async with httpx.AsyncClient(base_url=server) as client, client.stream("GET", "/test/events"):
        await eventually(lambda: subscribers(app), lambda n: n == 1)
    await eventually(lambda: subscribers(app), lambda n: n == 0)


async def test_websocket_carries_the_same_events(server: str, app: FastAPI) -> None:
    from websockets.asyncio.client import connect

    ws_url = server.replace("http://", "ws://") + "/test/ws"
    async with connect(ws_url) as socket:
        await eventually(lambda: subscribers(app))
        event_id = await publish(CHANNEL, {"type": "task.updated", "id": 5})
        message = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
        assert message == {
            "id": event_id,
            "event": "task.updated",
            "data": {"type": "task.updated", "id": 5},
        }
        ping = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
        assert ping == {"event": "ping"}
    await eventually(lambda: subscribers(app), lambda n: n == 0)


async def test_websocket_since_replays(server: str) -> None:
    from websockets.asyncio.client import connect

    seen = await publish(CHANNEL, {"n": 1})
    await publish(CHANNEL, {"n": 2})
    ws_url = server.replace("http://", "ws://") + f"/test/ws?since={seen}"
    async with connect(ws_url) as socket:
        message = orjson.loads(await asyncio.wait_for(socket.recv(), 5))
    assert message["data"] == {"n": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12),
        (" 7 ", 7),
        ("abc", None),
        ("-1", None),
        ("9" * 30, None),
    ],
)
def test_event_ids_from_clients_are_parsed_strictly(
    value: str | None, expected: int | None
) -> None:
    assert parse_event_id(value) == expected
