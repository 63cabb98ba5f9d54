"""What scripts/bench_streams.py, scripts/chaos.py and tests/test_chaos.py share.

- ``serve(env)``: ``app serve`` in a subprocess (one uvicorn process), ready when /readyz is.
- ``make_users(n)``: accounts and access tokens, made through the auth service directly
  (no HTTP rate limit on signups/logins in the way).
- ``open_sse`` / ``sse_frames``: a Server-Sent Events client on a raw asyncio socket; a
  thousand of them cost little in one process (httpx costs ~10x the memory and CPU).
- ``rss_kib(pid)``: resident memory of a process, from /proc.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson

from app.config import Settings, load_settings
from app.services import open_services

PASSWORD = "correct-Horse-9"  # noqa: S105 - throwaway accounts on a throwaway database


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Raise the soft limit on open files towards the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    url: str
    host: str
    port: int
    process: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


async def _http_status(host: str, port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1]) if line else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()


@asynccontextmanager
async def serve(env: dict[str, str], *, within: float = 60) -> AsyncIterator[Server]:
    """``app serve`` with ``env`` on top of this process's environment, on a free port."""
    port = free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        **env,
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
    server = Server(f"http://127.0.0.1:{port}", "127.0.0.1", port, process)
    # Drained continuously: a full stderr pipe would block the server's logging.
    drain = asyncio.create_task(_drain(process, server.stderr))
    try:
        deadline = time.monotonic() + within
        while await _http_status(server.host, port, "/readyz") != 200:
            if process.returncode is not None:
                await drain
                raise RuntimeError("app serve exited:\n" + "".join(server.stderr[-40:]))
            if time.monotonic() > deadline:
                raise RuntimeError("app serve not ready:\n" + "".join(server.stderr[-40:]))
            await asyncio.sleep(0.1)
        yield server
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await drain


async def _drain(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        lines.append(line.decode(errors="replace"))
        del lines[:-500]


async def make_users(
    count: int, prefix: str, settings: Settings | None = None
) -> list[tuple[int, str]]:
    """``count`` accounts; (user id, access token) each. Settings default to the environment's."""
    settings = settings or load_settings()
    users: list[tuple[int, str]] = []
    async with open_services(settings) as services:
        for n in range(count):
            email = f"{prefix}-{n}@example.com"
            user_id = await services.auth.signup(email, PASSWORD)
            session = await services.auth.login(email, PASSWORD)
            assert user_id is not None, email
            assert session is not None, email
            users.append((user_id, session.access_token))
    return users


# --- a raw Server-Sent Events client ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    id: int | None
    event: str
    data: bytes


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


@dataclass
class SseStream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    chunked: bool

    def close(self) -> None:
        self.writer.close()


async def open_sse(
    host: str,
    port: int,
    token: str,
    *,
    last_event_id: int | None = None,
    receive_buffer: int | None = None,
    within: float = 10,
) -> SseStream:
    """GET /api/events; raises ``HttpError`` on a non-200 answer, TimeoutError after ``within`` s.

    ``receive_buffer`` shrinks the socket's receive buffer (SO_RCVBUF, set before connecting
    so the advertised window stays small): a client that stops reading then pushes back on
    the server after a few kilobytes instead of megabytes.
    """
    if receive_buffer is None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), within)
        reader, writer = await asyncio.open_connection(sock=sock)
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
    writer.write(
        (
            f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n{resume}\r\n"
        ).encode()
    )
    try:
        status_line = await asyncio.wait_for(reader.readline(), within)
        if not status_line:
            raise ConnectionResetError("closed before the status line")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), within)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 200:
            length = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), within) if length else b""
            raise HttpError(status, body)
    except BaseException:
        writer.close()
        raise
    return SseStream(reader, writer, headers.get("transfer-encoding") == "chunked")


async def sse_frames(stream: SseStream) -> AsyncIterator[Frame]:
    """The stream's events (comments and ``retry:`` lines skipped) until it ends."""
    reader = stream.reader
    buffer = b""
    while True:
        if stream.chunked:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = (await reader.readexactly(size + 2))[:-2]
        else:
            data = await reader.read(65_536)
            if not data:
                return
        buffer += data
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            frame = _parse_frame(block)
            if frame is not None:
                yield frame


def _parse_frame(block: bytes) -> Frame | None:
    event_id: int | None = None
    event = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"id":
            event_id = int(value)
        elif name == b"event":
            event = value.decode()
        elif name == b"data":
            data.append(value)
    if not data:
        return None  # a comment (heartbeat) or the retry hint
    return Frame(event_id, event, b"\n".join(data))


def payload(frame: Frame) -> dict[str, object]:
    value = orjson.loads(frame.data)
    assert isinstance(value, dict)
    return value
