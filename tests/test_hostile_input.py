"""Hostile input beyond the fuzzer, against a real uvicorn: every request below gets a
clear 4xx with a JSON body (or, refused by the HTTP parser before the app, a 4xx from
uvicorn), nothing is stored, and the event loop the server runs in is never blocked — its
lag is measured all along (``LagProbe``)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
import random
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.observability.http_limits import LimitedHttpToolsProtocol
from tests.auth_helpers import new_user
from tests.helpers import live_server

LAG_LIMIT_MS = 250  # generous for a shared CI machine; a blocked loop shows seconds


class LagProbe:
    """How late a 10 ms sleep wakes up in this loop (the server's: live_server shares it)."""

    def __init__(self) -> None:
        self.worst_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - started - 0.01) * 1000)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    # Short enough for a test to wait them out.
    return make_settings(request_head_timeout_seconds=1, request_body_timeout_seconds=1)


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    async with (
        app.router.lifespan_context(app),
        live_server(app) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        # As `app serve` does after startup (app/runtime.py): full collections then skip the
        # test process's whole heap, whose pauses the probe would otherwise count.
        gc.collect()
        gc.freeze()
        try:
            yield http, await new_user(http, "hostile@example.com")
        finally:
            gc.unfreeze()


async def task_count(http: httpx.AsyncClient, headers: dict[str, str]) -> int:
    response = await http.get("/api/tasks", params={"limit": 50}, headers=headers)
    return len(response.json()["items"])


def assert_json_4xx(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)


async def test_oversized_and_deeply_nested_json(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = served
    json_headers = {**headers, "Content-Type": "application/json"}
    with LagProbe() as lag:
        big = b'{"title": "' + b"x" * 2_000_000 + b'"}'
        assert_json_4xx(await http.post("/api/tasks", content=big, headers=json_headers), 413)
        deep = b"[" * 200_000 + b"]" * 200_000  # 400 KB: under the body limit
        response = await http.post("/api/tasks", content=deep, headers=json_headers)
        assert_json_4xx(response, 400, 422)
        deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        response = await http.post("/api/tasks", content=deep_object, headers=json_headers)
        assert_json_4xx(response, 400, 422)
    assert await task_count(http, headers) == 0
    assert lag.worst_ms < LAG_LIMIT_MS


async def test_invalid_utf8_and_nul_characters(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = served
    json_headers = {**headers, "Content-Type": "application/json"}
    with LagProbe() as lag:
        response = await http.post(
            "/api/tasks", content=b'{"title": "\xff\xfe broken"}', headers=json_headers
        )
        assert_json_4xx(response, 400, 422)
        # PostgreSQL text cannot hold NUL; the API must refuse it, not fail on the INSERT.
        response = await http.post("/api/tasks", json={"title": "a\u0000b"}, headers=headers)
        assert_json_4xx(response, 422)
        response = await http.get("/api/search", params={"q": "a\u0000b"}, headers=headers)
        assert_json_4xx(response, 422)
    assert await task_count(http, headers) == 0
    assert lag.worst_ms < LAG_LIMIT_MS


SQL_AND_TSQUERY = [
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "a & b | !c <-> (d:* & 'e')",
    "%_\\%\\_",
    "!!!&&&|||((()))",
    ":*",
    "$1 $$ $tag$",
]


async def test_sql_and_tsquery_metacharacters_are_plain_text(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = served
    with LagProbe() as lag:
        for text in SQL_AND_TSQUERY:
            response = await http.post(
                "/api/tasks", json={"title": text, "body": text}, headers=headers
            )
            assert response.status_code == 201, response.text
            assert response.json()["title"] == text
            for mode in ("fulltext", "fuzzy", "semantic", "hybrid"):
                found = await http.get(
                    "/api/search", params={"q": text, "mode": mode}, headers=headers
                )
                assert found.status_code == 200, (mode, text, found.text)
    assert await task_count(http, headers) == len(SQL_AND_TSQUERY)
    assert lag.worst_ms < LAG_LIMIT_MS


async def test_long_search_strings_query_strings_and_headers(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = served
    with LagProbe() as lag:
        response = await http.get("/api/search", params={"q": "word " * 2_000}, headers=headers)
        assert_json_4xx(response, 422)  # 10,000 characters: past the documented 1,000
        # httpx refuses to send these itself: raw requests instead.
        auth = headers["Authorization"]
        status = await raw_status(http, f"GET /api/tasks?x={'y' * 100_000} HTTP/1.1", auth)
        assert status is None or 400 <= status < 500, status
        padding = [f"X-Pad-{n}: {'z' * 8_000}" for n in range(20)]  # 160 KB of headers
        status = await raw_status(http, "GET /api/tasks HTTP/1.1", auth, *padding)
        assert status == 431  # past MAX_REQUEST_HEAD_BYTES, read no further
    assert lag.worst_ms < LAG_LIMIT_MS


async def raw_status(http: httpx.AsyncClient, request_line: str, *headers: str) -> int | None:
    """Send one request as written; its status, or None when the server closed first."""
    url = http.base_url
    assert url.host
    assert url.port
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        lines = [request_line, f"Host: {url.host}", "Connection: close"]
        lines += [h if ": " in h else f"Authorization: {h}" for h in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    except ConnectionError:
        return None
    finally:
        writer.close()
    return int(status_line.split()[1]) if status_line else None


async def test_thousands_of_forged_cursors(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = served
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    with LagProbe() as lag:
        for _ in range(400):  # five at a time: the probe then sees a blocked loop, not a queue
            cursors = ["".join(rng.choices(alphabet, k=rng.randint(1, 500))) for _ in range(5)]
            responses = await asyncio.gather(
                *(
                    http.get("/api/tasks", params={"cursor": cursor}, headers=headers)
                    for cursor in cursors
                )
            )
            for response in responses:
                assert_json_4xx(response, 400)
        repeated = [("cursor", "abc")] * 3_000  # one URL, thousands of cursors
        response = await http.get("/api/tasks", params=repeated, headers=headers)
        assert 400 <= response.status_code < 500
    assert lag.worst_ms < LAG_LIMIT_MS


async def test_slow_heads_and_bodies_are_cut_off(
    served: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """Slow-loris: 50 connections trickling a head, 50 a body; each gets 408 after its
    timeout (1 s here) while an ordinary client is served as usual."""
    http, headers = served
    url = http.base_url
    assert url.host
    assert url.port

    async def trickle(first: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(first)  # and nothing more
            await writer.drain()
            return await asyncio.wait_for(reader.read(1000), 10)
        finally:
            writer.close()

    slow_head = b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: "
    slow_body = (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + headers["Authorization"].encode() + b"\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"title": "sl'
    )
    slow = [asyncio.create_task(trickle(slow_head)) for _ in range(50)]
    slow += [asyncio.create_task(trickle(slow_body)) for _ in range(50)]
    await asyncio.sleep(0.2)  # all connected and stalled
    # Measured while the slow clients hold their connections (not when the hundred 408s go
    # out together: the test's own clients share this loop and would count).
    with LagProbe() as lag:
        started = time.perf_counter()
        assert (await http.get("/api/tasks", headers=headers)).status_code == 200
        assert time.perf_counter() - started < 0.5  # not queued behind the slow ones
        await asyncio.sleep(0.3)
    answers = await asyncio.gather(*slow)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b'{"detail":"Request' in answer
    assert await task_count(http, headers) == 0
    assert lag.worst_ms < LAG_LIMIT_MS


def test_the_protocol_reaches_reload_and_worker_processes() -> None:
    """uvicorn pickles its config, protocol class included, for `app dev`'s reloader and for
    WEB_CONCURRENCY > 1 workers: a class made at run time would fail there."""
    from app.cli import server

    assert pickle.loads(pickle.dumps(LimitedHttpToolsProtocol)) is LimitedHttpToolsProtocol  # noqa: S301
    assert "http=LimitedHttpToolsProtocol," in inspect.getsource(server)
