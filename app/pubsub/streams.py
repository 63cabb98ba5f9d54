"""Server-Sent Events and WebSocket sessions over a broker subscription.

Both speak the same events: ``id`` (resume point), ``event`` (the payload's ``type``, else
``message``) and ``data`` (the payload as JSON). Both send a heartbeat after
PUBSUB_HEARTBEAT_SECONDS of silence, so proxies keep the connection open and dead clients
are found, and both unsubscribe the moment the client goes away.

- SSE: ``Last-Event-ID`` (sent by browsers' EventSource on reconnect) replays what was
  missed; ``retry: 3000`` tells EventSource to reconnect after 3 s. A dropped slow
  consumer gets a final ``event: dropped`` and reconnects from its last id.
- WebSocket: the client may send ``since`` in the query string; messages are JSON objects
  ``{"id", "event", "data"}``; a ping is ``{"event": "ping"}``. A dropped slow consumer is
  closed with code 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from app.pubsub import Broker, Event, SubscriberDropped, Subscription

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-store",
    # nginx and some PaaS proxies buffer responses unless told otherwise.
    "X-Accel-Buffering": "no",
}


def parse_event_id(value: str | None) -> int | None:
    """A resume point from Last-Event-ID / ``since``; None when absent or not an id."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > 19:
        return None
    return int(value.strip())


async def open_sse(
    broker: Broker, channels: list[str], *, since: int | None, heartbeat: float
) -> StreamingResponse:
    """Subscribe now (so nothing published after this call is missed), then stream."""
    subscription = await broker.subscribe(channels, since=since)
    return StreamingResponse(
        _sse_body(broker, subscription, heartbeat),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def _sse_body(
    broker: Broker, subscription: Subscription, heartbeat: float
) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 3000\n\n"
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps each wait in a task of its
                # own, one more task and loop turn per event and per client.
                async with asyncio.timeout(heartbeat):
                    event = await anext(subscription)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            except StopAsyncIteration:
                return
            except SubscriberDropped as dropped:
                yield b"event: dropped\ndata: " + orjson.dumps({"reason": str(dropped)}) + b"\n\n"
                return
            yield _sse_frame(event)
    finally:
        # Runs when the client disconnects too: Starlette cancels the body iterator.
        await broker.unsubscribe(subscription)


def _sse_frame(event: Event) -> bytes:
    frame = event.encoded.get("sse")
    if frame is None:
        name = str(event.payload.get("type", "message")).replace("\n", " ")
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
            event.id,
            name.encode(),
            orjson.dumps(event.payload),
        )
        event.encoded["sse"] = frame
    return frame


def _websocket_message(event: Event) -> str:
    message = event.encoded.get("websocket")
    if message is None:
        name = event.payload.get("type", "message")
        message = orjson.dumps({"id": event.id, "event": name, "data": event.payload})
        event.encoded["websocket"] = message
    return message.decode()


async def run_websocket(
    websocket: WebSocket,
    broker: Broker,
    channels: list[str],
    *,
    since: int | None,
    heartbeat: float,
) -> None:
    """Accept the socket and forward events until either side goes away."""
    subscription = await broker.subscribe(channels, since=since)
    await websocket.accept()
    # The client sends nothing we need, but reading is how a close from its side is seen;
    # the watcher then ends the subscription, which ends the loop below. One task per
    # socket, none per event.
    watcher = asyncio.create_task(_unsubscribe_on_close(websocket, broker, subscription))
    try:
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    event = await anext(subscription)
            except TimeoutError:
                await websocket.send_json({"event": "ping"})
                continue
            except StopAsyncIteration:
                if not watcher.done():  # the server is stopping, not the client gone
                    await websocket.close(code=1001)
                return
            except SubscriberDropped as dropped:
                await websocket.close(code=1013, reason=str(dropped)[:120])
                return
            await websocket.send_text(_websocket_message(event))
    except WebSocketDisconnect:
        pass
    finally:
        watcher.cancel()
        await broker.unsubscribe(subscription)


async def _unsubscribe_on_close(
    websocket: WebSocket, broker: Broker, subscription: Subscription
) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    await broker.unsubscribe(subscription)
