"""Many instances, one script: every scaling switch on at once, then parts taken away mid-run.

    .venv/bin/python -m scripts.scenario_scale [--journeys 6] [--short] [--json]

Starts, in a temp dir on this machine: a primary PostgreSQL and a streaming replica of it
(embedded), PgBouncer in transaction mode in front of the primary, a Redis, two ``app
serve`` processes and two ``app worker`` processes — all with DB_POOL_MODE=pgbouncer,
DATABASE_DIRECT_URL, DATABASE_REPLICA_URLS and the three Redis backends. Then a user journey
runs again and again: sign up on one instance, log in on the other, open the event stream
(SSE) there, create a task and complete it on the first, read it back and search for it on
the second (read-your-writes across instances), receive both events on the stream, and
enqueue a job that records each run.

Phases: steady; the replica stopped; Redis stopped; one worker SIGKILLed — each taken away
after the phase's first journey and brought back before its last ones, which must then
succeed in full again. Checked: no 5xx ever; every write there afterwards (no lost writes);
every job run (none lost), and once, except jobs the killed worker held (rescued when their
lease ran out and run again if it had run them without recording it: at least once is the
promise). While Redis is down the events of the stream
are allowed to be missing (the broker is Redis), and a stream opened then may be refused with
503 and Retry-After (its replay store is away; an EventSource retries): the journey is then
"degraded", not failed. Any other 5xx fails it.
Exit 1 when a check fails. ``--short`` (the test's form) runs two journeys per step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.jobs import job
from app.services import current_services

ROOT = Path(__file__).resolve().parent.parent
SECRET = "scenario-secret-key-that-is-long-enough-0123456789"  # noqa: S105 - throwaway
PASSWORD = "correct horse battery staple"  # noqa: S105 - throwaway users
NO_DISK = ("--save", "", "--appendonly", "no")
RUNS_TABLE = "CREATE TABLE IF NOT EXISTS scenario_runs (token text NOT NULL, pid int NOT NULL)"


@job(name="scenario.record")
async def record_run(token: str, seconds: float = 0.0) -> None:
    """Records that it ran (and where); ``seconds`` keeps a job in flight for a kill."""
    await asyncio.sleep(seconds)
    async with current_services.get().db.acquire() as conn:
        await conn.execute(
            "INSERT INTO scenario_runs (token, pid) VALUES ($1, $2)", token, os.getpid()
        )


# --- the machines --------------------------------------------------------------------------


@dataclass
class Cluster:
    base: Path
    primary_url: str = ""
    replica_url: str = ""
    pooled_url: str = ""
    redis_port: int = 0
    servers: list[str] = field(default_factory=list)
    _primary: Any = None
    _replica: Any = None
    _bouncer: Any = None
    _redis: subprocess.Popen[bytes] | None = None
    _processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ENV": "test",
            "SECRET_KEY": SECRET,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "console",
            "DATABASE_URL": self.pooled_url,
            "DATABASE_DIRECT_URL": self.primary_url,
            "DB_POOL_MODE": "pgbouncer",
            "DATABASE_REPLICA_URLS": self.replica_url,
            "DATABASE_REPLICA_CHECK_INTERVAL": "0.2",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CACHE_BACKEND": "redis",
            "PUBSUB_BACKEND": "redis",
            "RATE_LIMIT_BACKEND": "redis",
            "JOBS_INLINE_WORKER": "false",
            "JOBS_MODULES": "scripts.scenario_scale",
            "JOBS_LEASE_SECONDS": "3",
            "JOBS_POLL_INTERVAL": "0.5",
            # The verdict tells rescued jobs (attempt > 1) from the rows the jobs leave.
            "JOBS_KEEP_SUCCEEDED": "true",
            "RATE_LIMIT_SIGNUP_PER_IP": "100000",
            "RATE_LIMIT_LOGIN_PER_IP": "100000",
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_KIB": "1024",
            "MAILER": "memory",
        }

    async def start(self) -> None:
        from app.db import migrate
        from app.db.embedded import EmbeddedPostgres
        from app.db.embedded_pgbouncer import LocalPgBouncer
        from app.db.embedded_replica import EmbeddedReplica

        self._primary = EmbeddedPostgres(self.base / "primary", ephemeral=True)
        admin = await asyncio.to_thread(self._primary.ensure_running)
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute("CREATE DATABASE pgfirst")
        finally:
            await conn.close()
        self.primary_url = admin.replace("/postgres?", "/pgfirst?")
        await asyncio.to_thread(migrate.upgrade, self.primary_url)
        conn = await asyncpg.connect(self.primary_url)
        try:
            await conn.execute(RUNS_TABLE)
        finally:
            await conn.close()
        self._replica = EmbeddedReplica(self.base / "replica", primary=self._primary)
        replica_admin = await asyncio.to_thread(self._replica.ensure_running)
        self.replica_url = replica_admin.replace("/postgres?", "/pgfirst?")
        self._bouncer = LocalPgBouncer(self.base / "pgbouncer", server_dsn=admin)
        await asyncio.to_thread(self._bouncer.start)
        self.pooled_url = self._bouncer.dsn("pgfirst")
        self.redis_port = _free_port()
        await self.start_redis()
        ports = [_free_port(), _free_port()]
        self.servers = [f"http://127.0.0.1:{port}" for port in ports]
        await asyncio.gather(
            *(self._spawn(f"serve{i}", "serve", PORT=str(port)) for i, port in enumerate(ports)),
            self.start_worker(0),
            self.start_worker(1),
        )
        await asyncio.gather(*(self._ready(i, url) for i, url in enumerate(self.servers)))

    async def close(self) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.terminate()
        for process in self._processes.values():
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self.stop_redis()
        if self._bouncer is not None:
            await asyncio.to_thread(self._bouncer.stop)
        if self._replica is not None:
            await asyncio.to_thread(self._replica.destroy)
        if self._primary is not None:
            await asyncio.to_thread(self._primary.destroy)

    # What the phases take away and give back.

    async def stop_replica(self) -> None:
        await asyncio.to_thread(self._replica.stop)

    async def start_replica(self) -> None:
        await asyncio.to_thread(self._replica.ensure_running)

    async def stop_redis(self) -> None:
        process, self._redis = self._redis, None
        if process is not None:
            process.terminate()
            await asyncio.to_thread(process.wait, 10)

    async def start_redis(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("redis-server is needed (apt-get install redis-server)")
        self._redis = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [*(executable, "--port", str(self.redis_port), "--bind", "127.0.0.1"), *NO_DISK],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not await _accepts(self.redis_port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            await asyncio.sleep(0.02)

    def worker_index(self, pid: int) -> int:
        for index in (0, 1):
            if self._processes[f"worker{index}"].pid == pid:
                return index
        raise RuntimeError(f"no worker process has pid {pid}")

    async def kill_worker(self, index: int) -> None:
        process = self._processes[f"worker{index}"]
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def start_worker(self, index: int) -> None:
        await self._spawn(f"worker{index}", "worker")

    async def _spawn(self, name: str, *args: str, **env: str) -> None:
        log = (self.base / f"{name}.log").open("ab")
        self._processes[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            *args,
            cwd=ROOT,
            env={**self.env(), **env},
            stdout=log,
            stderr=log,
        )
        log.close()

    async def _ready(self, index: int, url: str) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=url) as client:
            while True:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                process = self._processes[f"serve{index}"]
                if time.monotonic() > deadline or process.returncode is not None:
                    log = (self.base / f"serve{index}.log").read_text(errors="replace")
                    raise RuntimeError(f"{url} not ready:\n{log[-3000:]}")
                await asyncio.sleep(0.1)


# --- the journey ---------------------------------------------------------------------------


@dataclass
class Outcome:
    phase: str
    step: str  # "before", "during", "after"
    ok: bool = True
    degraded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    task_id: int | None = None
    seconds: float = 0.0


async def journey(cluster: Cluster, n: int, phase: str, step: str, jobs: list[str]) -> Outcome:
    """One user, two instances: writes on ``a``, reads and the stream on ``b``."""
    outcome = Outcome(phase, step)
    started = time.perf_counter()
    a, b = cluster.servers[n % 2], cluster.servers[(n + 1) % 2]
    word = f"w{uuid.uuid4().hex[:10]}"
    email = f"{word}@example.com"
    redis_down = phase == "redis stopped" and step == "during"

    def expect(response: httpx.Response, status: int, what: str) -> bool:
        outcome.statuses.append(response.status_code)
        if response.status_code != status:
            outcome.problems.append(f"{what}: {response.status_code} {response.text[:120]}")
            return False
        return True

    # One cookie jar for both instances: one user's browser (read-your-writes cookie).
    async with httpx.AsyncClient(timeout=15) as client:
        signup = await client.post(
            f"{a}/api/auth/signup", json={"email": email, "password": PASSWORD}
        )
        login = await client.post(
            f"{b}/api/auth/login", json={"email": email, "password": PASSWORD}
        )
        if not (expect(signup, 202, "signup") and expect(login, 200, "login")):
            outcome.ok = False
            return _done(outcome, started)
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        events = Events()
        stream = asyncio.create_task(_read_events(client, b, auth, events))
        created = await client.post(
            f"{a}/api/tasks", json={"title": f"{word} scenario"}, headers=auth
        )
        if expect(created, 201, "create"):
            task_id = outcome.task_id = int(created.json()["id"])
            done = await client.patch(
                f"{a}/api/tasks/{task_id}", json={"completed": True}, headers=auth
            )
            expect(done, 200, "complete")
            read = await client.get(f"{b}/api/tasks/{task_id}", headers=auth)
            if expect(read, 200, "read on the other instance") and not read.json()["completed"]:
                outcome.problems.append("read on the other instance: not completed (stale)")
            found = await client.get(f"{b}/api/search", params={"q": word}, headers=auth)
            if expect(found, 200, "search") and task_id not in {
                hit["id"] for hit in found.json()["items"]
            }:
                outcome.problems.append("search on the other instance: task not found")
            wanted = {("task.created", task_id), ("task.completed", task_id)}
            deadline = time.monotonic() + (1.0 if redis_down else 10.0)
            while not wanted <= events.seen and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.arrived.wait(), left)
                events.arrived.clear()
            if not wanted <= events.seen:
                if redis_down:
                    outcome.degraded.append("stream events missing (Redis down)")
                else:
                    outcome.problems.append(f"stream: got {sorted(events.seen)}")
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
        if events.status == 503 and redis_down:
            # The stream's replay store is away: 503 with Retry-After, and the client's
            # EventSource retries. Counted apart from the other statuses.
            outcome.degraded.append("stream refused with 503 while Redis is down")
        elif events.status is not None:
            outcome.statuses.append(events.status)
    await enqueue_jobs(cluster, [word])
    jobs.append(word)
    outcome.ok = not outcome.problems
    return _done(outcome, started)


def _done(outcome: Outcome, started: float) -> Outcome:
    outcome.seconds = time.perf_counter() - started
    if any(status >= 500 for status in outcome.statuses):
        outcome.ok = False
    return outcome


class Events:
    """What the stream delivered: (type, id) pairs, and an event set on each arrival."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.arrived = asyncio.Event()
        self.status: int | None = None  # of the stream's response

    def add(self, event: dict[str, Any]) -> None:
        self.seen.add((str(event.get("type")), int(event.get("id", 0))))
        self.arrived.set()


async def _read_events(
    client: httpx.AsyncClient, base: str, auth: dict[str, str], into: Events
) -> None:
    # Last-Event-ID 0 replays what the channel holds: no race with the stream's subscription.
    headers = {**auth, "Last-Event-ID": "0"}
    async with client.stream("GET", f"{base}/api/events", headers=headers) as response:
        into.status = response.status_code
        into.arrived.set()
        if response.status_code != 200:
            return
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.add(json.loads(line[6:]))


# --- phases --------------------------------------------------------------------------------

Action = Callable[[], Awaitable[None]]


async def run_phase(
    cluster: Cluster,
    name: str,
    take: Action | None,
    give: Action | None,
    per_step: int,
    jobs: list[str],
    counter: list[int],
) -> list[Outcome]:
    outcomes: list[Outcome] = []

    async def step(label: str) -> None:
        for _ in range(per_step):
            counter[0] += 1
            outcomes.append(await journey(cluster, counter[0], name, label, jobs))

    await step("before")
    if take is not None:
        await take()
    await step("during")
    if give is not None:
        await give()
        await _recovered(cluster, name, jobs, counter, outcomes)
    await step("after")
    return outcomes


async def _recovered(
    cluster: Cluster, name: str, jobs: list[str], counter: list[int], outcomes: list[Outcome]
) -> None:
    """Journeys until one succeeds in full (reconnects take up to a few seconds)."""
    deadline = time.monotonic() + 20
    while True:
        counter[0] += 1
        outcome = await journey(cluster, counter[0], name, "recovering", jobs)
        outcomes.append(outcome)
        if outcome.ok and not outcome.degraded:
            return
        if time.monotonic() > deadline:
            return


async def kill_worker_mid_jobs(cluster: Cluster, tokens: list[str], killed: list[int]) -> None:
    """Give the workers jobs that stay in flight a second, then SIGKILL one holding some."""
    batch = [f"slow-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    await enqueue_jobs(cluster, batch, seconds=1.0)
    tokens.extend(batch)
    conn = await asyncpg.connect(cluster.primary_url)
    try:
        deadline = time.monotonic() + 10
        holder = None
        while holder is None and time.monotonic() < deadline:
            # A worker's id is host:pid:random (app.jobs.worker).
            holder = await conn.fetchval(
                "SELECT split_part(locked_by, ':', 2)::int FROM jobs "
                "WHERE name = 'scenario.record' AND state = 'running' LIMIT 1"
            )
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    index = cluster.worker_index(holder) if holder else 0
    killed.append(index)
    await cluster.kill_worker(index)


async def enqueue_jobs(cluster: Cluster, tokens: list[str], seconds: float = 0.0) -> None:
    # Through the pooler, as the app's own enqueues go.
    conn = await asyncpg.connect(cluster.pooled_url, statement_cache_size=0)
    try:
        await conn.executemany(
            "INSERT INTO jobs (name, args, queue) VALUES ('scenario.record', $1::jsonb, 'default')",
            [(json.dumps({"token": token, "seconds": seconds}),) for token in tokens],
        )
        await conn.execute("SELECT pg_notify('pgfirst_jobs', 'scenario')")
    finally:
        await conn.close()


# --- checks --------------------------------------------------------------------------------


async def final_checks(
    cluster: Cluster, outcomes: list[Outcome], tokens: list[str]
) -> dict[str, Any]:
    conn = await asyncpg.connect(cluster.primary_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await conn.fetch("SELECT token, count(*) AS n FROM scenario_runs GROUP BY token")
            runs = {row["token"]: row["n"] for row in rows}
            if all(token in runs for token in tokens) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        created = [o.task_id for o in outcomes if o.task_id is not None]
        kept = await conn.fetch(
            "SELECT id, completed_at IS NOT NULL AS completed FROM tasks WHERE id = ANY($1)",
            created,
        )
        # A job the killed worker held is claimed again: attempt 2. Only those may run twice.
        rescued = {
            row["token"]
            for row in await conn.fetch(
                "SELECT args->>'token' AS token FROM jobs "
                "WHERE name = 'scenario.record' AND attempt > 1"
            )
        }
    finally:
        await conn.close()
    lost_writes = len(created) - sum(1 for row in kept if row["completed"])
    lost_jobs = [token for token in tokens if token not in runs]
    repeated = [token for token in tokens if runs.get(token, 0) > 1]
    unexplained = [token for token in repeated if token not in rescued]
    server_errors = sum(1 for o in outcomes for status in o.statuses if status >= 500)
    return {
        "journeys": len(outcomes),
        "failed": [f"{o.phase}/{o.step}: {o.problems}" for o in outcomes if not o.ok],
        "degraded": sorted({reason for o in outcomes for reason in o.degraded}),
        "server_errors": server_errors,
        "tasks_written": len(created),
        "lost_writes": lost_writes,
        "jobs": len(tokens),
        "lost_jobs": len(lost_jobs),
        "jobs_run_twice": len(repeated),
        "jobs_rescued": len(rescued),
        "run_twice_not_rescued": len(unexplained),
        "journey_p50_seconds": round(statistics.median(o.seconds for o in outcomes), 3),
    }


def passed(report: dict[str, Any]) -> bool:
    return (
        not report["failed"]
        and report["server_errors"] == 0
        and report["lost_writes"] == 0
        and report["lost_jobs"] == 0
        and report["run_twice_not_rescued"] == 0
    )


async def run_scenario(*, per_step: int = 2, base: Path | None = None) -> dict[str, Any]:
    base = base or Path(tempfile.mkdtemp(prefix="pgfirst-scale-"))
    cluster = Cluster(base)
    outcomes: list[Outcome] = []
    tokens: list[str] = []
    counter = [0]
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        await cluster.start()
        timings["start"] = round(time.perf_counter() - started, 1)

        async def journeys_and_jobs(name: str, take: Action | None, give: Action | None) -> None:
            started = time.perf_counter()
            outcomes.extend(await run_phase(cluster, name, take, give, per_step, tokens, counter))
            timings[name] = round(time.perf_counter() - started, 1)

        await journeys_and_jobs("steady", None, None)
        await journeys_and_jobs("replica stopped", cluster.stop_replica, cluster.start_replica)
        await journeys_and_jobs("redis stopped", cluster.stop_redis, cluster.start_redis)
        killed: list[int] = []
        await journeys_and_jobs(
            "worker killed",
            lambda: kill_worker_mid_jobs(cluster, tokens, killed),
            lambda: cluster.start_worker(killed[-1]),
        )
        started = time.perf_counter()
        report = await final_checks(cluster, outcomes, tokens)
        timings["final checks"] = round(time.perf_counter() - started, 1)
        report["seconds"] = timings
    finally:
        await cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    report["passed"] = passed(report)
    return report


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--journeys", type=int, default=6, help="journeys per step")
    parser.add_argument("--short", action="store_true", help="two journeys per step")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = asyncio.run(run_scenario(per_step=2 if args.short else args.journeys))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
