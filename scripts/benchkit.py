"""Shared plumbing for scripts/bench_*: throwaway servers and summary statistics.

    with services() as (dsn, redis_url):   # embedded PostgreSQL + redis-server, migrated
        ...

DATABASE_URL / REDIS_URL, when set, are used instead of starting anything.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg

from app.db import migrate
from app.db.embedded import EmbeddedPostgres


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres(
    *, durable: bool = True, server_settings: dict[str, str] | None = None
) -> Iterator[str]:
    """DATABASE_URL, or a temp embedded server (fsync on unless ``durable=False``); migrated.

    ``server_settings`` (e.g. ``{"shared_buffers": "4GB"}``) are applied to the temp
    server with ALTER SYSTEM and a restart; a DATABASE_URL server is used as it is.
    """
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        migrate.upgrade(dsn)
        yield dsn
        return
    base = Path(tempfile.mkdtemp(prefix="pgfirst-bench-"))
    server = EmbeddedPostgres(base / "pg", ephemeral=not durable)
    try:
        dsn = server.ensure_running()
        if server_settings:
            asyncio.run(_alter_system(dsn, server_settings))
            server.stop()
            dsn = server.ensure_running()
        migrate.upgrade(dsn)
        yield dsn
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


async def _alter_system(dsn: str, settings: dict[str, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name, value in settings.items():
            # ALTER SYSTEM takes no parameters; names are identifiers, values literals.
            literal = value.replace("'", "''")
            await conn.execute(f"ALTER SYSTEM SET \"{name}\" = '{literal}'")
    finally:
        await conn.close()


def quarter_of_memory() -> str:
    """A quarter of physical memory, the usual shared_buffers for a dedicated server."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{total // 4 // 2**20}MB"


@contextmanager
def redis() -> Iterator[str]:
    """REDIS_URL, or a redis-server from PATH on a free port (no persistence)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def services(*, durable: bool = True) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield stack.enter_context(postgres(durable=durable)), stack.enter_context(redis())
