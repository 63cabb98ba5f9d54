"""Small helpers that let tests wait for an outcome instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool] = bool,
    *,
    within: float = 10.0,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until ``accept`` takes its result; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s; last result: {result!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def app_process(database_url: str, **env: str) -> AsyncIterator[str]:
    """Run `app serve` in a real subprocess on a free port; yields its base URL.

    Extra keyword arguments become environment variables (``CACHE_BACKEND="redis"``).
    """
    import httpx

    port = free_port()
    environment = {
        **os.environ,
        "ENV": "test",
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "JOBS_INLINE_WORKER": "false",
        **{key.upper(): value for key, value in env.items()},
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def ready() -> bool:
                if process.returncode is not None:
                    stderr = await process.stderr.read() if process.stderr else b""
                    raise AssertionError(f"app process exited: {stderr.decode()[-2000:]}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=30)
        yield base_url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def live_server(app: object) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port inside this event loop.

    For what an in-memory transport cannot show: streaming (SSE) and WebSockets.
    The app's lifespan is expected to be running already (``lifespan="off"``).
    """
    import uvicorn

    from app.observability.http_limits import LimitedHttpToolsProtocol, limited_protocol

    # The protocol `app serve` runs, with the app's own limits when its services are open.
    state = getattr(app, "state", None)
    services = getattr(state, "services", None) if state is not None else None
    http = limited_protocol(services.settings) if services is not None else LimitedHttpToolsProtocol
    port = free_port()
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        http=http,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _started(server), within=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _started(server: object) -> bool:
    return bool(getattr(server, "started", False))


async def run_cli(*args: str, **env: str) -> tuple[int, str]:
    """Run ``app <args>`` in a subprocess with ENV=test plus ``env``; (exit code, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        env={**os.environ, "ENV": "test", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def flushed_redis(url: str) -> str:
    """Empty the test Redis (tests share one server) and return its URL."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    return url
