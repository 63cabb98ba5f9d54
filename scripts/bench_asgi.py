"""CPU per request inside the app: the ASGI app driven in-process, no sockets, no server.

    .venv/bin/python -m scripts.bench_asgi [--users 300] [--requests 3000] [--repeats 5]

What `scripts/bench_http.py` measures through uvicorn and wrk is the app's CPU plus the
HTTP server's plus the kernel's, on a machine other processes share. This measures the first
alone, which moves much less with the machine's load: the app (ENV=production settings,
its lifespan run, services open on a throwaway embedded PostgreSQL) is called directly with
a minimal ASGI scope, ``--requests`` times per run, and each run's ``time.process_time``
divided by the requests; medians of ``--repeats`` runs after one warm-up run per case.

Cases: ``GET /healthz``; ``GET /api/tasks`` for one user (an L1 hit every time) and for
``--users`` users taken in turn (each with a project and 20 tasks, seeded through the API),
whose sessions and pages come and go in L1 as with real traffic. The ratio printed is
/healthz's CPU over the list's — the same quantity as bench_http's rate ratio, without the
server's share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvloop

from scripts.benchkit import postgres

Message = MutableMapping[str, Any]
PASSWORD = "correct horse battery staple"  # noqa: S105 - throwaway accounts
ENVIRONMENT = {
    "ENV": "production",
    "SECRET_KEY": "bench-secret-key-that-is-long-enough-000000",
    "LOG_LEVEL": "WARNING",
    "MAILER": "memory",
    "PUBLIC_URL": "https://bench.example.com",
    "JOBS_INLINE_WORKER": "false",
    "RATE_LIMIT_SIGNUP_PER_IP": "100000000",
    "RATE_LIMIT_LOGIN_PER_IP": "100000000",
    "RATE_LIMIT_LOGIN_PER_EMAIL": "100000000",
    "ACCESS_TOKEN_TTL_SECONDS": "86400",
}


async def seed(app: Any, users: int) -> list[bytes]:
    """``users`` accounts with a project and 20 tasks each; their access tokens."""
    tokens = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for n in range(users):
            credentials = {"email": f"user{n}@example.com", "password": PASSWORD}
            (await client.post("/api/auth/signup", json=credentials)).raise_for_status()
            login = await client.post("/api/auth/login", json=credentials)
            token = login.json()["access_token"]
            headers = {"authorization": f"Bearer {token}"}
            project = await client.post("/api/projects", json={"name": "p"}, headers=headers)
            for k in range(20):
                task = {"title": f"task {k}", "project_id": project.json()["id"]}
                (await client.post("/api/tasks", json=task, headers=headers)).raise_for_status()
            tokens.append(token.encode())
    return tokens


def scope(path: str, token: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"user-agent", b"bench_asgi")]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("bench", 80),
        "state": {},
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise RuntimeError(f"unexpected status {message['status']}")


async def measure(
    app: Callable[..., Awaitable[None]], path: str, tokens: list[bytes | None], requests: int
) -> float:
    """CPU µs per request over ``requests`` requests, tokens taken in turn."""
    began = time.process_time()
    for n in range(requests):
        await app(scope(path, tokens[n % len(tokens)]), receive, send)
    return (time.process_time() - began) / requests * 1e6


async def run(dsn: str, users: int, requests: int, repeats: int) -> None:
    os.environ.update({**ENVIRONMENT, "DATABASE_URL": dsn})
    from app.main import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        tokens = await seed(app, users)
        cases: dict[str, tuple[str, list[bytes | None]]] = {
            "GET /healthz": ("/healthz", [None]),
            "GET /api/tasks, one user": ("/api/tasks", [tokens[0]]),
            f"GET /api/tasks, {users} users": ("/api/tasks", list(tokens)),
        }
        results = {}
        for name, (path, case_tokens) in cases.items():
            await measure(app, path, case_tokens, requests)  # warm-up
            runs = [await measure(app, path, case_tokens, requests) for _ in range(repeats)]
            results[name] = statistics.median(runs)
    print(f"CPU per request in-process, {requests:,} requests per run, medians of {repeats}")
    for name, micros in results.items():
        print(f"{name:<28}{micros:>8.1f} µs")
    health = results["GET /healthz"]
    for name in list(results)[1:]:
        print(f"{name}: {health / results[name]:.2f}x /healthz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    with postgres() as dsn:
        uvloop.run(run(dsn, options.users, options.requests, options.repeats))


if __name__ == "__main__":
    main()
