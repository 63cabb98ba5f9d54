"""A realistic traffic mix at an open-loop arrival rate, against one `app serve` and a worker.

    .venv/bin/python -m scripts.loadmix [--users 300] [--tasks-each 40] [--rates 20,40,80]
        [--then-5x] [--duration 60] [--sse 60] [--generators 2] [--client raw|httpx]
        [--json FILE]

Starts a throwaway embedded PostgreSQL (scripts/benchkit.py), `app serve` with ENV=production
settings (one uvicorn worker) and `app worker` in a process of its own, then seeds
``--users`` accounts: a few through the API (signup, projects, tasks), the rest in SQL with
the same argon2id hash, projects, tasks with their embeddings and activity rows — and logs
every one of them in through the API, so each account is one a person could use.

Each rate in ``--rates`` (requests per second, summed over the generators) is then offered
for ``--duration`` seconds: arrivals are a Poisson process, sent whether or not earlier
requests have answered (open loop), and each latency is counted from the moment the request
was due, so a server that falls behind shows it instead of slowing the generator down.
The mix (``MIX``): task list, get, create, update, complete, delete; search in its four
modes and similar tasks; the activity feed; stats; projects; the caller's profile; login.
``--sse`` users keep an SSE stream open throughout; after each phase the events they
received are compared with the activity rows their writes left (one event per row).

``--then-5x`` adds a last phase at five times the highest rate of ``--rates`` that was
comfortable (no error, p99 under ``--comfort-p99`` ms).

Reported per phase: per route, req/s, p50/p95/p99 and errors; the generators' CPU and how
late they sent; the app's and the worker's CPU and RSS, PostgreSQL's CPU (postmaster and
every backend), connections in pg_stat_activity; the signals advisor's reading
(``app.signals.measure``: http.latency_p99, db.pool_wait, ...); the load average; and
whether every task created with a 2xx is in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import httpx
import orjson

from scripts.benchkit import free_port, percentile, postgres

PASSWORD = "loadmix-Password-1"  # noqa: S105 - throwaway accounts
TIMEOUT = 10.0  # seconds a request may take before it counts as an error
TICKS = os.sysconf("SC_CLK_TCK")

# Share of requests per operation (per mille). Reads 81 %, writes 18 %, login 1 %.
MIX: dict[str, int] = {
    "list_tasks": 200,
    "list_tasks_filtered": 60,
    "get_task": 140,
    "list_projects": 30,
    "create_task": 70,
    "update_task": 50,
    "complete_task": 40,
    "delete_task": 30,
    "search_fulltext": 80,
    "search_fuzzy": 40,
    "search_semantic": 40,
    "search_hybrid": 40,
    "similar_tasks": 20,
    "activity": 80,
    "stats": 60,
    "me": 10,
    "login": 10,
}


# --- server side -------------------------------------------------------------------------


def start_processes(
    dsn: str, report_seconds: float
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]:
    """`app serve` (production settings, one worker) and `app worker`, on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "ENV": "production",
        "SECRET_KEY": "loadmix-secret-key-that-is-long-enough-0000",
        "DATABASE_URL": dsn,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "MAILER": "memory",
        "PUBLIC_URL": "https://loadmix.example.com",
        "JOBS_INLINE_WORKER": "false",
        "RATE_LIMIT_LOGIN_PER_IP": "100000000",
        "RATE_LIMIT_LOGIN_PER_EMAIL": "100000000",
        "RATE_LIMIT_SIGNUP_PER_IP": "100000000",
        "ACCESS_TOKEN_TTL_SECONDS": "86400",
        # The advisor's HTTP and pool signals over about one phase, written often.
        "SIGNAL_REPORT_SECONDS": str(report_seconds),
        "SIGNAL_WINDOW_SECONDS": os.environ.get("SIGNAL_WINDOW_SECONDS", "60"),
    }
    web = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env)
    return web, worker, f"http://127.0.0.1:{port}"


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    sys.exit("the server did not become ready")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (with its reaped children's when ``children``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    total = int(fields[11]) + int(fields[12])
    if children:
        total += int(fields[13]) + int(fields[14])
    return total / TICKS


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_queue_seconds(pid: int) -> float:
    """Time ``pid``'s threads spent runnable but waiting for a CPU (/proc/<pid>/schedstat
    is the main thread's; the task directory has every thread's)."""
    total = 0
    try:
        for thread in Path(f"/proc/{pid}/task").iterdir():
            total += int((thread / "schedstat").read_text().split()[1])
    except OSError:
        pass
    return total / 1e9


def postgres_cpu(postmaster: int) -> float:
    """CPU of the postmaster, its live children and the children it has reaped."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == postmaster:
                total += (int(stat[11]) + int(stat[12])) / TICKS
    return total


# --- seeding -----------------------------------------------------------------------------


@dataclass
class Account:
    user_id: int
    email: str
    token: str = ""
    projects: list[int] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    words: list[str] = field(default_factory=list)


def words_for_seed() -> list[str]:
    from scripts.seed import WORK_WORDS, vocabulary

    return list(dict.fromkeys(WORK_WORDS + vocabulary(3000)[len(WORK_WORDS) :]))


def sentence(rng: random.Random, words: list[str], low: int, high: int) -> str:
    # Zipf-like: rank r drawn with probability ~ 1/r, as words are in real text.
    count = rng.randint(low, high)
    return " ".join(words[int(len(words) ** rng.random()) - 1] for _ in range(count))


async def seed(base: str, dsn: str, users: int, tasks_each: int, api_users: int) -> list[Account]:
    """``users`` accounts that can log in, each with 3 projects and ``tasks_each`` tasks."""
    from app.activity import record_many
    from app.config import load_settings
    from app.services import open_services
    from app.stats.service import refresh_user_stats

    rng = random.Random(17)
    words = words_for_seed()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for n in range(min(api_users, users)):
            credentials = {"email": f"api{n}@example.com", "password": PASSWORD}
            (await client.post("/api/auth/signup", json=credentials)).raise_for_status()
            session = await client.post("/api/auth/login", json=credentials)
            token = session.raise_for_status().json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            for p in range(3):
                answer = await client.post("/api/projects", json={"name": f"P{p}"}, headers=headers)
                project = answer.raise_for_status().json()["id"]
                for _ in range(tasks_each // 3):
                    task = {
                        "title": sentence(rng, words, 2, 5),
                        "body": sentence(rng, words, 8, 25),
                        "project_id": project,
                    }
                    (await client.post("/api/tasks", json=task, headers=headers)).raise_for_status()

    # The bulk statements (COPY into the HNSW index on a busy machine) outlive the default.
    settings = load_settings(database_url=dsn, env="test", db_command_timeout=1800)
    async with open_services(settings, dsn=dsn) as services, services.db.acquire() as conn:
        # Every account gets the API users' argon2id hash: the same password, so each logs in.
        password_hash = await conn.fetchval("SELECT password_hash FROM users LIMIT 1")
        await conn.execute(
            """
            INSERT INTO users (email, password_hash, email_verified_at, tokens_valid_after)
            SELECT 'user' || g || '@example.com', $1, now(), now() - interval '1 minute'
            FROM generate_series(1, $2) AS g
            """,
            password_hash,
            users - min(api_users, users),
        )
        rows = await conn.fetch(
            "SELECT id FROM users WHERE email LIKE 'user%' AND NOT EXISTS "
            "(SELECT FROM tasks t WHERE t.user_id = users.id) ORDER BY id"
        )
        bulk = [row["id"] for row in rows]
        projects = await conn.fetch(
            "INSERT INTO projects (user_id, name) SELECT u, 'Project ' || p "
            "FROM unnest($1::bigint[]) AS u, generate_series(1, 3) AS p RETURNING id, user_id",
            bulk,
        )
        by_user: dict[int, list[int]] = defaultdict(list)
        for row in projects:
            by_user[row["user_id"]].append(row["id"])
        now = datetime.now(UTC)
        records = []
        for user_id in bulk:
            for n in range(tasks_each):
                title, body = sentence(rng, words, 2, 5), sentence(rng, words, 8, 25)
                vector = services.embedder.embed(f"{title}\n{body}")
                created = now - timedelta(minutes=tasks_each - n)
                project = by_user[user_id][n % 3]
                records.append((user_id, project, title, body, created, created, vector, now))
        # The indexes on embeddings are built once after the load, as the migrations define
        # them: inserting 10,000 rows one by one into the HNSW graph takes minutes here.
        vector_indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'tasks' AND indexdef LIKE '%embedding%'"
        )
        for index in vector_indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        columns = ["user_id", "project_id", "title", "body", "created_at", "updated_at"]
        await conn.copy_records_to_table(
            "tasks", columns=[*columns, "embedding", "embedded_at"], records=records
        )
        for index in vector_indexes:
            await conn.execute(index["indexdef"])
        made = await conn.fetch(
            "SELECT id, user_id, created_at FROM tasks WHERE user_id = ANY($1::bigint[])", bulk
        )
        await record_many(
            conn,
            [(r["user_id"], "task.created", "task", r["id"], {}, r["created_at"]) for r in made],
        )
        await conn.execute("ANALYZE")
        await refresh_user_stats(services.db)
        accounts = [
            Account(row["id"], row["email"])
            for row in await conn.fetch("SELECT id, email FROM users ORDER BY id")
        ]
        for account in accounts:
            owned = await conn.fetch(
                "SELECT id, title FROM tasks WHERE user_id = $1 ORDER BY id", account.user_id
            )
            account.tasks = [row["id"] for row in owned]
            # Search terms from the user's own titles (a word in case there is none).
            titled = sorted({w for row in owned for w in row["title"].split()})[:20]
            account.words = titled or ["task"]
            account.projects = [
                row["id"]
                for row in await conn.fetch(
                    "SELECT id FROM projects WHERE user_id = $1", account.user_id
                )
            ]

    # Every account logs in through the API: the seeded ones are real accounts.
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(4)

        async def login(account: Account) -> None:
            async with gate:
                answer = await client.post(
                    "/api/auth/login", json={"email": account.email, "password": PASSWORD}
                )
                account.token = answer.raise_for_status().json()["access_token"]

        await asyncio.gather(*(login(account) for account in accounts))
    return accounts


# --- the generator (runs in processes of its own) ---------------------------------------


class RawClient:
    """HTTP/1.1 keep-alive over asyncio streams: a fraction of httpx's CPU per request."""

    def __init__(self, base: str, max_connections: int) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def forget_idle(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    async def request(
        self, method: str, path: str, token: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = head.encode() + b"\r\n" + (body or b"")
        async with self.slots:
            for attempt in range(2):
                reused = bool(self.idle) and attempt == 0
                conn = (
                    self.idle.pop()
                    if reused
                    else await asyncio.open_connection(self.host, self.port)
                )
                try:
                    status, payload, keep = await self._exchange(conn, data)
                except ConnectionResetError:
                    conn[1].close()
                    # The server closed an idle connection (uvicorn's keep-alive timeout)
                    # before reading the request: once more on a fresh one.
                    if reused:
                        continue
                    raise
                except BaseException:
                    conn[1].close()
                    raise
                if keep:
                    self.idle.append(conn)
                else:
                    conn[1].close()
                return status, payload
        raise ConnectionResetError("connection closed twice")

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes
    ) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(data)
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed before the status line")
        status = int(line[9:12])
        length, chunked, keep = None, False, True
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = b"close" not in value.lower()
        if status in (204, 304):
            return status, b"", keep
        if chunked:
            parts = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                parts.append(await reader.readexactly(size + 2))
            await reader.readline()
            return status, b"".join(p[:-2] for p in parts), keep
        if length is not None:
            return status, await reader.readexactly(length), keep
        return status, await reader.read(), False


class HttpxClient:
    """The same interface on httpx, to measure what the client library itself costs."""

    def __init__(self, base: str, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=None)
        self.client = httpx.AsyncClient(base_url=base, limits=limits, timeout=TIMEOUT)

    def forget_idle(self) -> None:
        pass

    async def request(
        self, method: str, path: str, token: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        answer = await self.client.request(method, path, headers=headers, content=body)
        return answer.status_code, answer.content


class Generator:
    """Offers one phase's arrivals for its share of the users and records what happened."""

    def __init__(self, base: str, accounts: list[Account], sse_users: int, client: str) -> None:
        self.base = base
        self.accounts = accounts
        self.sse_accounts = accounts[:sse_users]
        self.client: RawClient | HttpxClient = (
            RawClient(base, 512) if client == "raw" else HttpxClient(base, 512)
        )
        self.rng = random.Random(os.getpid())
        self.ops = list(MIX)
        self.weights = list(MIX.values())
        self.created: set[int] = set()  # created with a 2xx and not deleted since
        self.deleted: set[int] = set()
        self.completed: set[int] = set()
        self.events: dict[int, int] = defaultdict(int)
        self.dropped = 0
        self.counter = 0
        self.streaming = 0  # streams whose response has begun: subscribed
        self.all_streaming = asyncio.Event()
        if not self.sse_accounts:
            self.all_streaming.set()

    async def watch(self, account: Account) -> None:
        """An SSE stream held open; counts the events (``id:`` lines) that arrive."""
        parts = urlsplit(self.base)
        while True:
            try:
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                writer.write(
                    f"GET /api/events HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {account.token}\r\n\r\n".encode()
                )
                subscribed = False
                while line := await reader.readline():
                    if not subscribed and line.startswith(b"retry:"):
                        subscribed = True
                        self.streaming += 1
                        if self.streaming == len(self.sse_accounts):
                            self.all_streaming.set()
                    if line.startswith(b"id: "):
                        self.events[account.user_id] += 1
                    elif line.startswith(b"event: dropped"):
                        self.dropped += 1
                writer.close()
                self.streaming -= subscribed
            except OSError:
                await asyncio.sleep(1)

    async def phase(self, rate: float, duration: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.client.forget_idle()
        latencies: dict[str, list[float]] = defaultdict(list)
        statuses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        late: list[float] = []
        in_flight: set[asyncio.Task[None]] = set()

        async def fire(op: str, due: float) -> None:
            try:
                async with asyncio.timeout(TIMEOUT):
                    route, status = await self.operate(op)
                outcome = str(status)
            except TimeoutError:
                route, outcome = op, "timeout"
            except Exception as exc:  # a reset, a short read: an error of this request
                route, outcome = op, type(exc).__name__
            latencies[route].append((loop.time() - due) * 1000)
            statuses[route][outcome] += 1

        cpu, start = time.process_time(), loop.time()
        due, end = start, start + duration
        while True:
            due += self.rng.expovariate(rate)
            if due >= end:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            else:
                late.append(-wait * 1000)
            task = loop.create_task(fire(self.rng.choices(self.ops, self.weights)[0], due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        sent = sum(len(v) for v in latencies.values()) + len(in_flight)
        if in_flight:
            await asyncio.wait(in_flight)
        return {
            "latencies": dict(latencies),
            "statuses": {route: dict(counts) for route, counts in statuses.items()},
            "sent": sent,
            "cpu": time.process_time() - cpu,
            "late_ms": sorted(late)[-max(1, len(late) // 100) :] if late else [],
            "late_count": len(late),
        }

    async def operate(self, op: str) -> tuple[str, int]:
        """Runs one operation for a random user; (route label, status)."""
        account = self.rng.choice(self.accounts)
        request = self.client.request
        token, rng = account.token, self.rng
        if op == "list_tasks":
            return "GET /api/tasks", (await request("GET", "/api/tasks", token))[0]
        if op == "list_tasks_filtered":
            query = rng.choice(
                ["completed=false", f"project_id={rng.choice(account.projects)}", "limit=50"]
            )
            return "GET /api/tasks?filter", (await request("GET", f"/api/tasks?{query}", token))[0]
        if op == "list_projects":
            return "GET /api/projects", (await request("GET", "/api/projects", token))[0]
        if op == "stats":
            return "GET /api/stats/me", (await request("GET", "/api/stats/me", token))[0]
        if op == "activity":
            return "GET /api/activity", (await request("GET", "/api/activity", token))[0]
        if op == "me":
            return "GET /api/auth/me", (await request("GET", "/api/auth/me", token))[0]
        if op == "login":
            body = orjson.dumps({"email": account.email, "password": PASSWORD})
            return "POST /api/auth/login", (await request("POST", "/api/auth/login", "", body))[0]
        if op.startswith("search_"):
            mode = op.removeprefix("search_")
            text = " ".join(rng.choices(account.words, k=2 if mode == "hybrid" else 1))
            if mode == "fuzzy" and len(text) > 4:  # a typo: one letter dropped
                cut = rng.randrange(1, len(text) - 1)
                text = text[:cut] + text[cut + 1 :]
            path = f"/api/search?mode={mode}&q={quote(text)}"
            return f"GET /api/search {mode}", (await request("GET", path, token))[0]
        if op == "create_task":
            self.counter += 1
            body = orjson.dumps(
                {
                    "title": f"New {' '.join(rng.choices(account.words, k=2))} {self.counter}",
                    "body": "Written under load " + " ".join(rng.choices(account.words, k=5)),
                    "project_id": rng.choice(account.projects),
                }
            )
            status, payload = await request("POST", "/api/tasks", token, body)
            if status == 201:
                task_id = orjson.loads(payload)["id"]
                account.tasks.append(task_id)
                self.created.add(task_id)
            return "POST /api/tasks", status
        if not account.tasks:
            return "GET /api/tasks", (await request("GET", "/api/tasks", token))[0]
        task_id = rng.choice(account.tasks)
        path = f"/api/tasks/{task_id}"
        if op == "get_task":
            status = (await request("GET", path, token))[0]
            return "GET /api/tasks/{id}", self.raced(task_id, status)
        if op == "similar_tasks":
            status = (await request("GET", f"{path}/similar", token))[0]
            return "GET /api/tasks/{id}/similar", self.raced(task_id, status)
        if op == "update_task":
            self.counter += 1
            body = orjson.dumps({"title": f"Renamed {self.counter}"})
            status = (await request("PATCH", path, token, body))[0]
            return "PATCH /api/tasks/{id} title", self.raced(task_id, status)
        if op == "complete_task":
            done = task_id not in self.completed
            (self.completed.add if done else self.completed.discard)(task_id)
            body = orjson.dumps({"completed": done})
            status = (await request("PATCH", path, token, body))[0]
            return "PATCH /api/tasks/{id} completed", self.raced(task_id, status)
        # delete: taken out of the user's tasks before it is sent, so nothing picks it again
        account.tasks.remove(task_id)
        self.deleted.add(task_id)
        self.created.discard(task_id)
        status = (await request("DELETE", path, token))[0]
        return "DELETE /api/tasks/{id}", status

    def raced(self, task_id: int, status: int) -> int:
        """A 404 for a task this generator deleted meanwhile is the right answer: 200."""
        return 200 if status == 404 and task_id in self.deleted else status


def generator_main(
    pipe: Pipe, base: str, accounts: list[Account], sse_users: int, client: str
) -> None:
    """A generator process: answers ("ready",), ("phase", rate, duration), ("state",) and
    ("stop",) on ``pipe``."""
    import uvloop

    async def serve() -> None:
        generator = Generator(base, accounts, sse_users, client)
        watchers = [asyncio.create_task(generator.watch(a)) for a in generator.sse_accounts]
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command[0] == "ready":
                await generator.all_streaming.wait()
                pipe.send(True)
            elif command[0] == "phase":
                pipe.send(await generator.phase(command[1], command[2]))
            elif command[0] == "state":
                pipe.send(
                    {
                        "created": sorted(generator.created),
                        "events": dict(generator.events),
                        "dropped": generator.dropped,
                        "sse_users": [a.user_id for a in generator.sse_accounts],
                    }
                )
            else:
                for watcher in watchers:
                    watcher.cancel()
                pipe.send(None)
                return

    uvloop.run(serve())


# --- the run -----------------------------------------------------------------------------


ACTIVITY_OF = "SELECT user_id, count(*) AS n FROM activity_logs WHERE user_id = ANY($1) GROUP BY 1"
CONNECTIONS = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS clients,
       count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active') AS active,
       count(*) FILTER (WHERE state = 'idle in transaction') AS idle_in_transaction,
       count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting_on_locks
FROM pg_stat_activity WHERE pid <> pg_backend_pid()
"""
# What the busy backends wait on, kept for the seconds with the most lock waits.
WAITS = """
SELECT state, wait_event_type, wait_event, left(query, 90) AS query
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'
"""
SIGNAL_KEYS = ("http.latency_p50", "http.latency_p99", "http.error_rate", "db.pool_wait")


@dataclass
class Servers:
    web: int
    worker: int
    postmaster: int


class Sampler:
    """Once a second: CPU and RSS of the app, the worker and PostgreSQL; connections."""

    def __init__(self, servers: Servers, conn: asyncpg.Connection) -> None:
        self.servers, self.conn = servers, conn
        self.rows: list[dict[str, float]] = []
        self.worst_waits: tuple[float, list[dict[str, Any]]] = (1, [])

    def cpu(self) -> dict[str, float]:
        s = self.servers
        return {
            "web": cpu_seconds(s.web),
            "web_run_queue": run_queue_seconds(s.web),
            "worker": cpu_seconds(s.worker),
            "postgres": postgres_cpu(s.postmaster),
        }

    async def run(self) -> None:
        previous, before = self.cpu(), time.monotonic()
        while True:
            await asyncio.sleep(1)
            now, at = self.cpu(), time.monotonic()
            row = {f"{k}_cpu": (now[k] - previous[k]) / (at - before) for k in now}
            row |= {"web_rss": rss_mb(self.servers.web), "worker_rss": rss_mb(self.servers.worker)}
            row |= dict(await self.conn.fetchrow(CONNECTIONS))  # type: ignore[arg-type]
            self.rows.append(row)
            if row["waiting_on_locks"] and row["waiting_on_locks"] >= self.worst_waits[0]:
                waits = [dict(r) for r in await self.conn.fetch(WAITS)]
                self.worst_waits = (row["waiting_on_locks"], waits)
            previous, before = now, at


def summarise(results: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for result in results:
        for route, values in result["latencies"].items():
            latencies[route] += values
        for route, counts in result["statuses"].items():
            for status, count in counts.items():
                statuses[route][status] += count
    routes = {}
    for route in sorted(latencies):
        values = latencies[route]
        errors = sum(n for s, n in statuses[route].items() if s[0] not in "23")
        routes[route] = {
            "rps": len(values) / duration,
            "p50": percentile(values, 0.50),
            "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99),
            "errors": errors,
            "statuses": dict(statuses[route]),
        }
    every = [v for values in latencies.values() for v in values]
    late = sorted(v for r in results for v in r["late_ms"])
    return {
        "routes": routes,
        "total": {
            "rps": len(every) / duration,
            "p50": percentile(every, 0.50),
            "p95": percentile(every, 0.95),
            "p99": percentile(every, 0.99),
            "errors": sum(r["errors"] for r in routes.values()),
            "requests": len(every),
        },
        "generator_cpu": [r["cpu"] / duration for r in results],
        "late_sends": sum(r["late_count"] for r in results),
        "worst_late_ms": late[-1] if late else 0.0,
    }


def server_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / max(1, len(rows))

    def peak(key: str) -> float:
        return max((r[key] for r in rows), default=0.0)

    return {
        "web_cpu": mean("web_cpu"),
        "web_run_queue": mean("web_run_queue_cpu"),
        "web_cpu_peak": peak("web_cpu"),
        "worker_cpu": mean("worker_cpu"),
        "postgres_cpu": mean("postgres_cpu"),
        "postgres_cpu_peak": peak("postgres_cpu"),
        "web_rss_peak": peak("web_rss"),
        "worker_rss_peak": peak("worker_rss"),
        "connections_peak": peak("clients"),
        "active_mean": mean("active"),
        "active_peak": peak("active"),
        "lock_waits_peak": peak("waiting_on_locks"),
        "idle_in_transaction_peak": peak("idle_in_transaction"),
    }


def answer(pipe: Pipe, seconds: float) -> Any:
    if not pipe.poll(seconds):
        raise SystemExit(f"a generator process gave no answer in {seconds:.0f} s")
    return pipe.recv()


async def activity_counts(conn: asyncpg.Connection, user_ids: list[int]) -> dict[int, int]:
    return {row["user_id"]: row["n"] for row in await conn.fetch(ACTIVITY_OF, user_ids)}


async def run_phases(
    options: argparse.Namespace,
    dsn: str,
    servers: Servers,
    pipes: list[Pipe],
    sse_ids: list[int],
) -> list[dict[str, Any]]:
    from app.config import load_settings
    from app.services import open_services
    from app.signals import measure

    settings = load_settings(database_url=dsn, env="test")
    loop = asyncio.get_running_loop()
    phases: list[dict[str, Any]] = []
    monitor = await asyncpg.connect(dsn)
    async with open_services(settings, dsn=dsn) as services:
        activity_before = await activity_counts(monitor, sse_ids)

        async def offer(rate: float) -> dict[str, Any]:
            sampler = Sampler(servers, monitor)
            sampling = asyncio.create_task(sampler.run())
            load_before = os.getloadavg()
            for pipe in pipes:
                pipe.send(("phase", rate / len(pipes), options.duration))
            # In-flight requests end within TIMEOUT of the phase's end; a generator that
            # has not answered long after that is stuck, and the run stops saying so.
            deadline = options.duration + TIMEOUT + 60
            results = [await loop.run_in_executor(None, answer, pipe, deadline) for pipe in pipes]
            sampling.cancel()
            load_after = os.getloadavg()
            # The web process writes its window every few seconds: read it after one more.
            await asyncio.sleep(options.report_seconds + 1)
            report = (await measure(services.db, settings)).document()
            signals = {
                s["key"]: {"value": s["value"], "status": s["status"]}
                for s in report["signals"]
                if s["key"] in SIGNAL_KEYS or s["status"] in ("warn", "critical")
            }
            for pipe in pipes:
                pipe.send(("state",))
            states = [await loop.run_in_executor(None, answer, pipe, 60) for pipe in pipes]
            created = [task for state in states for task in state["created"]]
            found = await monitor.fetchval(
                "SELECT count(*) FROM tasks WHERE id = ANY($1::bigint[])", created
            )
            received = sum(n for state in states for n in state["events"].values())
            activity = await activity_counts(monitor, sse_ids)
            expected = sum(activity.get(u, 0) - activity_before.get(u, 0) for u in sse_ids)
            phase = {
                "offered_rps": rate,
                "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
                **summarise(results, options.duration),
                "server": server_summary(sampler.rows),
                "lock_waits": sampler.worst_waits[1],
                "signals": signals,
                "tasks_created_alive": len(created),
                "tasks_created_missing": len(created) - found,
                "sse_events_expected": expected,
                "sse_events_received": received,
                "sse_dropped": sum(state["dropped"] for state in states),
            }
            print_phase(phase)
            return phase

        rates = [float(r) for r in options.rates.split(",") if r]
        for rate in rates:
            phases.append(await offer(rate))
        if options.then_5x:
            comfortable = [
                p["offered_rps"]
                for p in phases
                if p["total"]["errors"] == 0 and p["total"]["p99"] < options.comfort_p99
            ]
            if not comfortable:
                print("no comfortable rate among --rates: no 5x phase")
            else:
                print(f"baseline {max(comfortable):g} req/s: offering 5x")
                phases.append(await offer(5 * max(comfortable)))
    await monitor.close()
    return phases


def print_phase(phase: dict[str, Any]) -> None:
    total, server = phase["total"], phase["server"]
    print(
        f"\n== offered {phase['offered_rps']:g} req/s: served {total['rps']:.1f} req/s, "
        f"p50 {total['p50']:.1f} / p95 {total['p95']:.1f} / p99 {total['p99']:.1f} ms, "
        f"{total['errors']} errors of {total['requests']}; load average "
        f"{phase['load_average'][0]} -> {phase['load_average'][1]}"
    )
    print(f"{'route':<36}{'req/s':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'errors':>8}  statuses")
    for route, r in phase["routes"].items():
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(r["statuses"].items()))
        print(
            f"{route:<36}{r['rps']:>8.1f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
            f"{r['errors']:>8}  {statuses}"
        )
    print(
        f"app CPU {server['web_cpu']:.0%} of a core (peak {server['web_cpu_peak']:.0%}; "
        f"waiting for a CPU {server['web_run_queue']:.0%} of the time), "
        f"RSS {server['web_rss_peak']:.0f} MB; worker CPU {server['worker_cpu']:.0%}, "
        f"RSS {server['worker_rss_peak']:.0f} MB; PostgreSQL CPU {server['postgres_cpu']:.0%} "
        f"(peak {server['postgres_cpu_peak']:.0%}); connections: {server['connections_peak']:.0f} "
        f"peak, active mean {server['active_mean']:.1f} / peak {server['active_peak']:.0f}, "
        f"idle in transaction peak {server['idle_in_transaction_peak']:.0f}, waiting on locks "
        f"peak {server['lock_waits_peak']:.0f}"
    )
    for wait in phase["lock_waits"]:
        print(f"  {wait['state']} {wait['wait_event_type']}:{wait['wait_event']} {wait['query']}")
    cpu = ", ".join(f"{c:.1%}" for c in phase["generator_cpu"])
    print(
        f"generators' CPU: {cpu} of a core; sends late: {phase['late_sends']} "
        f"(worst {phase['worst_late_ms']:.0f} ms)"
    )
    signals = ", ".join(
        f"{k} {v['value'] if v['value'] is None else round(v['value'], 2)} ({v['status']})"
        for k, v in sorted(phase["signals"].items())
    )
    print(f"signals: {signals}")
    print(
        f"tasks created with a 2xx and not deleted: {phase['tasks_created_alive']}, missing "
        f"from the database: {phase['tasks_created_missing']}; SSE events for the streaming "
        f"users: {phase['sse_events_received']} received / {phase['sse_events_expected']} "
        f"written (dropped streams: {phase['sse_dropped']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--tasks-each", type=int, default=40)
    parser.add_argument("--api-users", type=int, default=5, help="signed up through the API")
    parser.add_argument("--rates", default="25,50,100", help="req/s, comma-separated, in order")
    parser.add_argument("--then-5x", action="store_true")
    parser.add_argument("--comfort-p99", type=float, default=100.0, help="ms")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--sse", type=int, default=60, help="users with a stream open")
    parser.add_argument("--generators", type=int, default=2, help="processes")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--json", type=Path, help="write every figure there")
    parser.add_argument(
        "--report-seconds", type=float, default=5.0, help="SIGNAL_REPORT_SECONDS of the app"
    )
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per seeding request otherwise

    with postgres() as dsn:
        web, worker, base = start_processes(dsn, options.report_seconds)
        generators: list[Any] = []
        try:
            wait_ready(base)
            began = time.perf_counter()
            accounts = asyncio.run(
                seed(base, dsn, options.users, options.tasks_each, options.api_users)
            )
            print(
                f"seeded {len(accounts)} users with {options.tasks_each} tasks each, all logged "
                f"in, in {time.perf_counter() - began:.1f} s"
            )
            postmaster = asyncio.run(postmaster_of(dsn))
            context = multiprocessing.get_context("spawn")
            pipes = []
            share = options.sse // options.generators
            for n in range(options.generators):
                mine, theirs = context.Pipe()
                own = accounts[n :: options.generators]
                process = context.Process(
                    target=generator_main, args=(theirs, base, own, share, options.client)
                )
                process.start()
                theirs.close()  # so that a generator that dies ends recv() with EOFError
                generators.append(process)
                pipes.append(mine)
            sse_ids = [
                a.user_id
                for n in range(options.generators)
                for a in accounts[n :: options.generators][:share]
            ]
            for pipe in pipes:  # the streams subscribe before anything is counted
                pipe.send(("ready",))
                pipe.recv()
            phases = asyncio.run(
                run_phases(options, dsn, Servers(web.pid, worker.pid, postmaster), pipes, sse_ids)
            )
            for pipe in pipes:
                pipe.send(("stop",))
                pipe.recv()
        finally:
            for generator in generators:
                generator.join(timeout=10)
                if generator.is_alive():
                    generator.terminate()
            for server in (web, worker):
                server.terminate()
                server.wait(timeout=30)
    command = "python -m scripts.loadmix " + " ".join(sys.argv[1:])
    if options.json:
        options.json.write_text(json.dumps({"command": command, "phases": phases}, indent=1))


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def postmaster_of(dsn: str) -> int:
    """The postmaster is the parent of every backend, this one included (while it lives)."""
    conn = await asyncpg.connect(dsn)
    try:
        return parent_of(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
