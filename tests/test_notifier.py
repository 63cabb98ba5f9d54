"""The process's notifier on real servers: Postgres LISTEN/NOTIFY and Redis SUBSCRIBE.

The contract tests run against both backends through a small ``Server`` harness that knows
how to send a message on a topic, kill the notifier's connection and list what the server
thinks the notifier listens to.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.config import Settings
from app.main import create_app
from app.notifier import Notifier, create_postgres_notifier, create_redis_notifier
from app.notifier import postgres as postgres_notifier
from app.services import open_services
from tests import jobs_fixtures
from tests.auth_helpers import new_user
from tests.helpers import eventually, flushed_redis, free_port, live_server
from tests.test_streams import read_sse

# The notifier's connection, as the kill in the tests finds it: direct, idle after a LISTEN.
NOTIFIER_CONNECTION = """
datname = current_database() AND application_name = 'pgfirst-direct' AND query LIKE 'LISTEN%'
"""


class Inbox:
    """A handler that keeps what it hears, in order."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def __call__(self, topic: str, payload: str) -> None:
        self.messages.put_nowait((topic, payload))

    async def next(self, within: float = 5.0) -> tuple[str, str]:
        return await asyncio.wait_for(self.messages.get(), within)

    def empty(self) -> bool:
        return self.messages.empty()


class States:
    """A state handler that keeps each (connected, notifier_connected gauge) it hears."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.heard: asyncio.Queue[tuple[bool, float | None]] = asyncio.Queue()

    def __call__(self, connected: bool) -> None:
        self.heard.put_nowait((connected, sample("notifier_connected", self.backend)))

    async def next(self, within: float = 10.0) -> tuple[bool, float | None]:
        return await asyncio.wait_for(self.heard.get(), within)


@dataclass
class Server:
    backend: str
    notifier: Notifier
    send: Callable[[str, str], Awaitable[None]]
    kill: Callable[[], Awaitable[None]]
    listening: Callable[[], Awaitable[set[str]]]
    topic_prefix: str

    def topic(self, name: str) -> str:
        return self.topic_prefix + name


def sample(name: str, backend: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"backend": backend})


@pytest.fixture(params=["postgres", "redis"])
async def server(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Server]:
    async with AsyncExitStack() as stack:
        if request.param == "postgres":
            yield await _postgres_server(database_url, stack)
        else:
            yield await _redis_server(request.getfixturevalue("redis_url"), stack)


async def _postgres_server(database_url: str, stack: AsyncExitStack) -> Server:
    opened: list[asyncpg.Connection[Any]] = []

    async def connect() -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            database_url, server_settings={"application_name": "pgfirst-direct"}
        )
        opened.append(conn)
        return conn

    sender: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    stack.push_async_callback(sender.close)
    notifier = create_postgres_notifier(connect)
    await notifier.start()
    stack.push_async_callback(notifier.stop)

    async def send(topic: str, payload: str) -> None:
        await sender.execute("SELECT pg_notify($1, $2)", topic, payload)

    async def kill() -> None:
        killed = await sender.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE {NOTIFIER_CONNECTION}"
        )
        assert killed == 1

    async def listening() -> set[str]:
        # Asked on the notifier's own connection: LISTEN is a property of a session.
        rows = await opened[-1].fetch("SELECT pg_listening_channels() AS channel")
        return {row["channel"] for row in rows}

    return Server("postgres", notifier, send, kill, listening, "test_")


async def _redis_server(redis_url: str, stack: AsyncExitStack) -> Server:
    url = await flushed_redis(redis_url)
    client = Redis.from_url(url, decode_responses=True)
    stack.push_async_callback(client.aclose)
    notifier = create_redis_notifier(url)
    await notifier.start()
    stack.push_async_callback(notifier.stop)
    prefix = f"test.{uuid.uuid4().hex[:8]}."

    async def send(topic: str, payload: str) -> None:
        await client.publish(topic, payload)

    async def kill() -> None:
        assert await client.client_kill_filter(_type="pubsub") >= 1

    async def listening() -> set[str]:
        return set(await client.pubsub_channels(prefix + "*"))

    return Server("redis", notifier, send, kill, listening, prefix)


# --- delivery ----------------------------------------------------------------------------


async def test_a_message_reaches_every_handler_of_its_topic_and_no_other(server: Server) -> None:
    a, b, unheard = server.topic("a"), server.topic("b"), server.topic("unheard")
    first, second, other = Inbox(), Inbox(), Inbox()
    await server.notifier.listen(a, first)
    await server.notifier.listen(a, second)
    await server.notifier.listen(b, other)

    await server.send(unheard, "to nobody")
    await server.send(a, "to a")
    await server.send(b, "to b")

    assert await first.next() == (a, "to a")
    assert await second.next() == (a, "to a")
    # One connection delivers in order: once "to b" is in, everything sent before it is too.
    assert await other.next() == (b, "to b")
    assert (first.empty(), second.empty(), other.empty()) == (True, True, True)


async def test_unlisten_stops_delivery_and_the_last_one_lets_the_topic_go(
    server: Server,
) -> None:
    a, marker_topic = server.topic("a"), server.topic("marker")
    first, second, marker = Inbox(), Inbox(), Inbox()
    stop_first = await server.notifier.listen(a, first)
    stop_second = await server.notifier.listen(a, second)
    await server.notifier.listen(marker_topic, marker)
    assert await server.listening() == {a, marker_topic}

    await stop_first()
    assert await server.listening() == {a, marker_topic}  # the second handler still wants it
    await server.send(a, "one")
    assert await second.next() == (a, "one")
    assert first.empty()

    await stop_second()
    await eventually(server.listening, lambda channels: channels == {marker_topic})
    await server.send(a, "two")
    await server.send(marker_topic, "after")
    assert await marker.next() == (marker_topic, "after")
    assert (first.empty(), second.empty()) == (True, True)


async def test_a_failing_handler_does_not_stop_the_others(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    a = server.topic("a")

    def broken(topic: str, payload: str) -> None:
        raise RuntimeError("handler bug")

    inbox = Inbox()
    await server.notifier.listen(a, broken)
    await server.notifier.listen(a, inbox)
    with caplog.at_level(logging.ERROR, logger="app.notifier"):
        await server.send(a, "one")
        await server.send(a, "two")
        assert await inbox.next() == (a, "one")
        assert await inbox.next() == (a, "two")  # and the notifier kept reading
    assert sum("failed" in record.getMessage() for record in caplog.records) == 2


# --- connection loss ---------------------------------------------------------------------


async def test_a_killed_connection_is_announced_then_reopened_with_every_topic(
    server: Server,
) -> None:
    a, b = server.topic("a"), server.topic("b")
    states = States(server.backend)
    server.notifier.on_state(states)
    inbox = Inbox()
    await server.notifier.listen(a, inbox)
    await server.notifier.listen(b, inbox)

    await server.kill()
    assert (await states.next())[0] is False
    assert (await states.next())[0] is True
    assert server.notifier.connected
    assert server.notifier.health() == ("listening", True)

    assert await server.listening() == {a, b}
    await server.send(a, "after the reconnect")
    await server.send(b, "on the other topic")
    assert await inbox.next() == (a, "after the reconnect")
    assert await inbox.next() == (b, "on the other topic")


async def test_a_connection_closed_without_its_callback_is_noticed_and_reopened(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg announces a lost connection through a callback attached after it opens; one
    # that died before then never calls back. The supervisor also looks for itself.
    monkeypatch.setattr(postgres_notifier, "WATCH_SECONDS", 0.1)
    opened: list[asyncpg.Connection[Any]] = []

    async def connect() -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
        opened.append(conn)
        return conn

    notifier = create_postgres_notifier(connect)
    await notifier.start()
    try:
        states = States("postgres")
        notifier.on_state(states)
        topic, inbox = f"test_{uuid.uuid4().hex[:8]}", Inbox()
        await notifier.listen(topic, inbox)
        first = opened[-1]
        first.remove_termination_listener(notifier._on_terminated)  # type: ignore[attr-defined]
        first.terminate()
        assert (await states.next())[0] is False
        assert (await states.next())[0] is True
        assert notifier.connected
        assert opened[-1] is not first
        async with AsyncExitStack() as stack:
            sender = await asyncpg.connect(database_url)
            stack.push_async_callback(sender.close)
            await sender.execute("SELECT pg_notify($1, 'after')", topic)
        assert await inbox.next() == (topic, "after")
    finally:
        await notifier.stop()


async def test_a_removed_state_handler_hears_nothing(server: Server) -> None:
    kept, removed = States(server.backend), States(server.backend)
    server.notifier.on_state(kept)
    remove = server.notifier.on_state(removed)
    await server.notifier.listen(server.topic("a"), Inbox())
    remove()

    await server.kill()
    assert (await kept.next())[0] is False
    assert (await kept.next())[0] is True
    assert removed.heard.empty()


# --- metrics -----------------------------------------------------------------------------


async def test_metrics_follow_the_connection_and_count_reconnects(server: Server) -> None:
    states = States(server.backend)
    server.notifier.on_state(states)
    await server.notifier.listen(server.topic("a"), Inbox())
    reconnects = sample("notifier_reconnects_total", server.backend) or 0.0
    assert sample("notifier_connected", server.backend) == 1.0

    await server.kill()
    assert await states.next() == (False, 0.0)
    assert await states.next() == (True, 1.0)
    assert sample("notifier_reconnects_total", server.backend) == reconnects + 1

    await server.notifier.stop()
    assert sample("notifier_connected", server.backend) == 0.0


async def test_metrics_count_the_messages_received(server: Server) -> None:
    a, unheard = server.topic("a"), server.topic("unheard")
    inbox = Inbox()
    await server.notifier.listen(a, inbox)
    before = sample("notifier_messages_total", server.backend) or 0.0

    await server.send(unheard, "never reaches this process")
    for n in range(3):
        await server.send(a, str(n))
    for _ in range(3):
        await inbox.next()
    assert sample("notifier_messages_total", server.backend) == before + 3


# --- Postgres: polling mode and one connection per process -------------------------------


async def test_without_a_direct_url_the_notifier_polls_and_never_connects(
    make_settings: Callable[..., Settings], db_conn: asyncpg.Connection[Any]
) -> None:
    async with open_services(make_settings(db_pool_mode="pgbouncer")) as services:
        notifier = services.notifier
        states = States("postgres")
        notifier.on_state(states)
        await notifier.listen("test_a", Inbox())
        direct = await db_conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pgfirst-direct'"
        )
        assert notifier.health() == ("polling (no direct URL)", True)
        assert not notifier.connected
    assert direct == 0
    assert (await states.next())[0] is False  # heard on stop only: it never connected


async def test_polling_mode_announces_itself_disconnected_at_start() -> None:
    notifier = create_postgres_notifier(None)
    states = States("postgres")
    notifier.on_state(states)
    await notifier.start()
    try:
        assert await states.next() == (False, 0.0)
        assert notifier.health() == ("polling (no direct URL)", True)
    finally:
        await notifier.stop()


@pytest.mark.parametrize("inline_worker", [False, True], ids=["web", "web+worker"])
async def test_an_app_holds_one_listen_connection_for_every_topic(
    make_settings: Callable[..., Settings],
    db_conn: asyncpg.Connection[Any],
    inline_worker: bool,
) -> None:
    await db_conn.execute(jobs_fixtures.SCHEMA)
    settings = make_settings(
        jobs_inline_worker=inline_worker,
        jobs_modules=["tests.jobs_fixtures"],
        cache_backend="postgres",
        pubsub_backend="postgres",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
        AsyncExitStack() as streams,
    ):
        users = [await new_user(client, f"listener{n}@example.com") for n in range(3)]
        # Three SSE streams, three channels: LISTEN on each, all through the notifier.
        responses = [
            await streams.enter_async_context(client.stream("GET", "/api/events", headers=user))
            for user in users
        ]
        for user in users:
            await client.get("/api/tasks", headers=user)  # cached ...
            created = await client.post("/api/tasks", json={"title": "t"}, headers=user)
            assert created.status_code == 201  # ... and invalidated
        if inline_worker:
            await app.state.services.jobs.enqueue("test.record", {"value": "woken"})
            await eventually(
                lambda: db_conn.fetchval("SELECT count(*) FROM test_job_runs WHERE value = 'woken'")
            )
        listeners = await db_conn.fetch(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        # Every stream hears its event through that one connection (reading one event
        # closes the stream, so this comes last).
        for response in responses:
            assert len(await asyncio.wait_for(read_sse(response, 1), 5)) == 1
    assert [row["application_name"] for row in listeners] == ["pgfirst-direct"]


# --- Redis: unreachable at start ---------------------------------------------------------


async def test_a_redis_unreachable_at_start_is_joined_once_it_appears(redis_url: str) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    notifier = create_redis_notifier(url)
    states = States("redis")
    notifier.on_state(states)
    await notifier.start()  # does not raise
    process: asyncio.subprocess.Process | None = None
    try:
        assert await states.next() == (False, 0.0)
        assert notifier.health() == ("reconnecting", False)
        inbox = Inbox()
        await notifier.listen("test.late", inbox)

        process = await asyncio.create_subprocess_exec(
            executable,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await states.next() == (True, 1.0)
        client = Redis.from_url(url)
        try:
            await client.publish("test.late", "hello")
        finally:
            await client.aclose()
        assert await inbox.next() == ("test.late", "hello")
    finally:
        await notifier.stop()
        if process is not None:
            process.terminate()
            await process.wait()
