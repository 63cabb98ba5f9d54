"""Faults injected while the app is under load; afterwards, check that nothing was lost.

    .venv/bin/python -m scripts.chaos [--users 20] [--settle 5] [--fill 100000]

Runs a durable (fsync on) embedded PostgreSQL of its own, a redis-server, one ``app serve``
process and two ``app worker`` processes. ``--users`` writers each create tasks over HTTP
(and list them now and then) with a 10 s client timeout, while one SSE client per user
follows that user's events and reconnects with Last-Event-ID whenever its stream ends.
Faults, one after another, each followed by ``--settle`` seconds of load:

1. PostgreSQL stopped with ``pg_ctl -m fast`` and started again;
2. the same with ``-m immediate`` (no checkpoint: crash recovery on start);
3. ``pg_terminate_backend`` of every LISTEN connection (the app's and the workers');
4. SIGKILL of a worker in the middle of its jobs (a replacement starts, as a supervisor
   would start one);
5. 100,000 waiting jobs added to the queue at once;
6. with a second ``app serve`` on the Redis backends (cache, pub/sub, rate limits):
   redis-server stopped for 5 s and started again.

During each fault every answer must be a 2xx or a 503 with Retry-After: no 500, no other
5xx, no request past its timeout. Afterwards every task created with a 2xx is in the
database, every job ran (none left waiting, running or dead), every SSE client saw a
``task.created`` for each of its user's tasks, and the app process is the one started at
the beginning. Prints, per fault: requests during it, their statuses, the longest request
and the recovery time (fault start to the end of the last failed request).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.jobs import job
from scripts.streamkit import (
    HttpError,
    Server,
    free_port,
    make_users,
    open_sse,
    payload,
    raise_fd_limit,
    serve,
    sse_frames,
)

REQUEST_TIMEOUT = 10.0
OPS_TOKEN = "chaos-ops-token-0123456789abcdef"  # noqa: S105 - a throwaway server
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}  # /readyz then says what is not ready
NOOP_JOB = "chaos.noop"
SLOW_JOB = "chaos.slow"


@job(name=NOOP_JOB)
async def noop(n: int) -> None:
    """The filler of the job queue: runs in no time, so the drain is all queue overhead."""


@job(name=SLOW_JOB, timeout=30)
async def slow(n: int) -> None:
    """Long enough to be still running in a worker when it is killed."""
    await asyncio.sleep(3)


# --- load and observation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    elapsed: float
    route: str
    status: int | None  # None: no answer within the timeout, or the connection failed
    retry_after: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def acceptable(self) -> bool:
        return self.ok or (self.status == 503 and self.retry_after)

    @property
    def ended(self) -> float:
        return self.started + self.elapsed


@dataclass
class Load:
    """Writers, one per user: create a task, list tasks every fifth time, repeat."""

    base_url: str
    users: list[tuple[int, str]]
    pause: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    written: dict[int, set[int]] = field(default_factory=dict)
    written_at: dict[int, float] = field(default_factory=dict)  # task id -> request start

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=len(self.users) * 2)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=REQUEST_TIMEOUT, limits=limits
        ) as client:
            await asyncio.gather(*(self._writer(client, u, t, stop) for u, t in self.users))

    async def _writer(
        self, client: httpx.AsyncClient, user_id: int, token: str, stop: asyncio.Event
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        written = self.written.setdefault(user_id, set())
        n = 0
        while not stop.is_set():
            n += 1
            if n % 5 == 0:
                await self._request(client, "GET", "/api/tasks", headers, None)
            else:
                body = {"title": f"chaos {user_id} {n}"}
                answer = await self._request(client, "POST", "/api/tasks", headers, body)
                if answer is not None and answer.status_code == 201:
                    task_id = int(answer.json()["id"])
                    written.add(task_id)
                    self.written_at[task_id] = self.outcomes[-1].started
            await asyncio.sleep(self.pause)

    async def _request(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: dict[str, str] | None,
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            answer = await client.request(method, path, headers=headers, json=body)
        except httpx.HTTPError as exc:
            self.outcomes.append(
                Outcome(started, time.monotonic() - started, path, None, False, repr(exc))
            )
            return None
        detail = answer.text[:200] if answer.status_code >= 400 else ""
        self.outcomes.append(
            Outcome(
                started,
                time.monotonic() - started,
                f"{method} {path}",
                answer.status_code,
                "retry-after" in answer.headers,
                detail,
            )
        )
        return answer


@dataclass
class Follower:
    """One SSE client of a user: every task.created it saw, resuming after each end.

    It also hangs up by itself after 2-6 s and comes back with Last-Event-ID, as clients
    on flaky networks do, so that resuming is exercised in the middle of every fault.
    """

    host: str
    port: int
    token: str
    seen: set[int] = field(default_factory=set)
    last_id: int | None = None
    reconnects: int = 0
    refusals: Counter[int] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                stream = await open_sse(
                    self.host, self.port, self.token, last_event_id=self.last_id
                )
            except HttpError as exc:
                self.refusals[exc.status] += 1
                await asyncio.sleep(0.5)
                continue
            except (OSError, TimeoutError, ValueError):
                await asyncio.sleep(0.5)
                continue
            try:
                async with asyncio.timeout(random.uniform(2, 6)):
                    async for frame in sse_frames(stream):
                        if frame.id is not None:
                            self.last_id = frame.id
                        if frame.event == "task.created":
                            self.seen.add(int(payload(frame)["id"]))  # type: ignore[call-overload]
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                pass
            finally:
                stream.close()
            self.reconnects += 1
            await asyncio.sleep(0.2)


@dataclass
class FaultReport:
    name: str
    started: float
    fault_seconds: float  # how long the fault itself lasted (e.g. stop + start)
    outcomes: list[Outcome]
    note: str = ""
    events_lost: int = 0  # task events of writes made while the fault lasted, never delivered

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def violations(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.acceptable]

    @property
    def recovery(self) -> float:
        return max((o.ended - self.started for o in self.failures), default=0.0)

    def line(self) -> str:
        statuses = Counter(str(o.status or "no answer") for o in self.outcomes)
        elapsed = sorted(o.elapsed for o in self.outcomes) or [0.0]
        p99, longest = elapsed[int(0.99 * (len(elapsed) - 1))], elapsed[-1]
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        return (
            f"{self.name:<28} {len(self.outcomes):>6} requests ({shown}); fault "
            f"{self.fault_seconds:.1f} s; recovered {self.recovery:.1f} s after it began; "
            f"p99 {p99:.2f} s, longest {longest:.2f} s; violations {len(self.violations)}"
            + (f"; {self.note}" if self.note else "")
            + (f"; task events lost: {self.events_lost}" if self.events_lost else "")
        )


async def inject(
    name: str,
    load: Load,
    fault: Callable[[], Awaitable[str | None]],
    settle: float,
    server: Server,
) -> FaultReport:
    """Run ``fault`` under the running load; the requests from its start to ``settle`` s after."""
    started = time.monotonic()
    note = await fault() or ""
    fault_seconds = time.monotonic() - started
    await wait_ready(server, within=60)
    await asyncio.sleep(settle)
    ended = time.monotonic()
    window = [o for o in list(load.outcomes) if started <= o.started < ended]
    return FaultReport(name, started, fault_seconds, window, note)


async def wait_ready(server: Server, within: float) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        while True:
            if server.process.returncode is not None:
                raise RuntimeError("the app process exited:\n" + "".join(server.stderr[-40:]))
            last = ""
            try:
                answer = await client.get("/readyz", headers=OPS)
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"/readyz not 200 within {within} s: {last[:500]}")
            await asyncio.sleep(0.2)


# --- faults ---------------------------------------------------------------------------------------


async def restart_postgres(server: EmbeddedPostgres, mode: str) -> str:
    await asyncio.to_thread(server.stop, mode)  # type: ignore[arg-type]
    await asyncio.to_thread(server.ensure_running)
    return f"pg_ctl stop -m {mode}, start"


TERMINATE_LISTENERS = """
SELECT count(pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE application_name = 'pgfirst-direct' AND query ILIKE '%listen%'
"""


async def terminate_listeners(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        killed = await conn.fetchval(TERMINATE_LISTENERS)
    finally:
        await conn.close()
    return f"{killed} LISTEN connections terminated"


async def fill_jobs(count: int) -> str:
    from app.config import load_settings
    from app.services import open_services

    async with open_services(load_settings()) as services:
        started = time.monotonic()
        for first in range(0, count, 10_000):
            size = min(10_000, count - first)
            await services.jobs.enqueue_many(
                NOOP_JOB, [{"n": n} for n in range(first, first + size)]
            )
    return f"{count} jobs enqueued in {time.monotonic() - started:.1f} s"


# --- processes ------------------------------------------------------------------------------------


@asynccontextmanager
async def workers(
    count: int, env: dict[str, str]
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``count`` ``app worker`` processes; the list may be changed (a killed one replaced)."""
    started = [await start_worker(env) for _ in range(count)]
    try:
        yield started
    finally:
        for process in started:
            if process.returncode is None:
                process.terminate()
        for process in started:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--import",
        "scripts.chaos",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


ENQUEUE_SLOW = """
INSERT INTO jobs (name, args) SELECT $1, jsonb_build_object('n', n) FROM generate_series(1, $2) n
"""
# Worker ids are "<host>:<pid>:<random>": running slow jobs per worker process id.
HELD_BY_PID = """
SELECT split_part(locked_by, ':', 2) AS pid, count(*) AS held FROM jobs
WHERE name = $1 AND state = 'running'
GROUP BY 1
ORDER BY 2 DESC
"""


async def kill_worker(
    processes: list[asyncio.subprocess.Process], env: dict[str, str], jobs: int = 40
) -> str:
    """SIGKILL a worker while it is running some of ``jobs`` three-second jobs."""
    by_pid = {str(process.pid): n for n, process in enumerate(processes)}
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        await conn.execute(ENQUEUE_SLOW, SLOW_JOB, jobs)
        victim, held = 0, 0
        for _ in range(600):  # 30 s: a worker started just now may still be importing
            rows = [row for row in await conn.fetch(HELD_BY_PID, SLOW_JOB) if row[0] in by_pid]
            if rows:
                victim, held = by_pid[rows[0][0]], int(rows[0][1])
                break
            await asyncio.sleep(0.05)  # a claim has no event to await from outside
    finally:
        await conn.close()
    killed = processes[victim]
    killed.send_signal(signal.SIGKILL)
    await killed.wait()
    processes[victim] = await start_worker(env)
    return f"worker killed while running {held} of the {jobs} slow jobs; a new one started"


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            # Persistent, as Redis behind the pub/sub backend must be: its event ids come
            # from a counter in Redis, and one that restarts from zero breaks every resume.
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


async def stop_redis(redis: RedisServer, down: float) -> str:
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(down)
    await asyncio.to_thread(redis.start)
    return f"redis-server down {down:.0f} s"


# --- checks ---------------------------------------------------------------------------------------


async def missing_writes(dsn: str, load: Load) -> int:
    written = [task_id for ids in load.written.values() for task_id in ids]
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::bigint[])", written
        )
    finally:
        await conn.close()
    return len(written) - int(found)


def gaps(load: Load, followers: dict[int, Follower]) -> int:
    """Tasks created with a 2xx whose task.created event the user's SSE client never saw."""
    return sum(len(load.written[user] - followers[user].seen) for user in load.written)


async def unfinished_jobs(dsn: str, within: float) -> dict[str, int]:
    """Jobs not succeeded, once none is waiting or running (or ``within`` s passed)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while True:
            rows = await conn.fetch(
                "SELECT state::text, count(*) FROM jobs WHERE state <> 'succeeded' GROUP BY 1"
            )
            states = {row[0]: int(row[1]) for row in rows}
            if not states.get("available") and not states.get("running"):
                return states
            if time.monotonic() > deadline:
                return states
            await asyncio.sleep(1)
    finally:
        await conn.close()


JOB_FIGURES = """
SELECT
    count(*) FILTER (WHERE name = $1) AS filled,
    extract(epoch FROM max(finished_at) FILTER (WHERE name = $1)
                     - min(created_at) FILTER (WHERE name = $1)) AS fill_drained_in,
    count(*) FILTER (WHERE name <> $1) AS others,
    count(*) FILTER (WHERE attempt > 1) AS run_again,
    count(*) FILTER (WHERE name = $2 AND attempt > 1) AS slow_run_again
FROM jobs
"""


async def job_figures(dsn: str) -> str:
    """The filler's drain time and how many jobs ran more than once (rescued leases)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(JOB_FIGURES, NOOP_JOB, SLOW_JOB)
    finally:
        await conn.close()
    assert row is not None
    drained = f"{row['fill_drained_in']:.0f} s" if row["fill_drained_in"] is not None else "-"
    return (
        f"{row['filled']} filler jobs, enqueue to last one done {drained}; "
        f"{row['others']} other jobs; {row['run_again']} ran more than once "
        f"({row['slow_run_again']} of them held by the killed worker)"
    )


async def eventually_no_gaps(load: Load, followers: dict[int, Follower], within: float) -> int:
    for _ in range(int(within / 0.2)):
        if not gaps(load, followers):
            return 0
        await asyncio.sleep(0.2)  # the clients' streams have no "caught up" signal to await
    return gaps(load, followers)


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    reports: list[FaultReport]
    load: Load
    followers: dict[int, Follower]
    events_missing: int
    same_process: bool
    server_errors: list[str]

    @property
    def violations(self) -> list[Outcome]:
        return [o for report in self.reports for o in report.violations]


Fault = tuple[str, Callable[[], Awaitable[str | None]]]


async def phase(
    env: dict[str, str],
    users: list[tuple[int, str]],
    faults: list[Fault],
    *,
    settle: float,
    warmup: float = 3.0,
) -> Phase:
    """One ``app serve`` under load, the faults one after another, then the event check."""
    async with serve(env) as server:
        pid = server.pid
        load = Load(server.url, users)
        followers = {user: Follower(server.host, server.port, token) for user, token in users}
        writing, following = asyncio.Event(), asyncio.Event()
        writers = asyncio.create_task(load.run(writing))
        readers = [asyncio.create_task(f.run(following)) for f in followers.values()]
        try:
            await asyncio.sleep(warmup)
            reports = [await inject(name, load, fault, settle, server) for name, fault in faults]
        finally:
            writing.set()
            await writers
        events_missing = await eventually_no_gaps(load, followers, within=30)
        missing_at = [
            load.written_at[task]
            for user, tasks in load.written.items()
            for task in tasks - followers[user].seen
        ]
        for report in reports:
            until = report.started + report.fault_seconds + 1
            report.events_lost = sum(report.started <= at <= until for at in missing_at)
        following.set()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        same_process = server.process.returncode is None and server.pid == pid
        errors = [line for line in server.stderr if "unhandled error" in line]
    return Phase(reports, load, followers, events_missing, same_process, errors)


def base_env(dsn: str) -> dict[str, str]:
    return {
        "ENV": "test",
        "DATABASE_URL": dsn,
        "SECRET_KEY": "chaos-secret-key-0123456789abcdef0123456789",
        "LOG_LEVEL": "WARNING",
        "JOBS_INLINE_WORKER": "false",
        "ARGON2_MEMORY_KIB": "1024",
        "JOBS_LEASE_SECONDS": "3",
        "JOBS_POLL_INTERVAL": "0.5",
        # The verdict reads every job's row afterwards (state, attempts, drain time).
        "JOBS_KEEP_SUCCEEDED": "true",
        "OPS_TOKEN": OPS_TOKEN,
    }


async def run(options: argparse.Namespace) -> bool:
    base = Path(tempfile.mkdtemp(prefix="pgfirst-chaos-"))
    postgres = EmbeddedPostgres(base / "pg")
    redis = RedisServer(free_port(), base)
    try:
        dsn = await asyncio.to_thread(postgres.ensure_running)
        await asyncio.to_thread(migrate.upgrade, dsn)
        await asyncio.to_thread(redis.start)
        env = base_env(dsn)
        os.environ.update(env)
        async with workers(2, env) as running:
            pg_users = await make_users(options.users, "chaos-pg")
            pg_phase = await phase(
                env,
                pg_users,
                [
                    ("postgres restart, fast", lambda: restart_postgres(postgres, "fast")),
                    (
                        "postgres restart, immediate",
                        lambda: restart_postgres(postgres, "immediate"),
                    ),
                    ("LISTEN connections killed", lambda: terminate_listeners(dsn)),
                    ("worker SIGKILL", lambda: kill_worker(running, env)),
                    (f"{options.fill:,} jobs enqueued", lambda: fill_jobs(options.fill)),
                ],
                settle=options.settle,
            )
            redis_env = {
                **env,
                "REDIS_URL": redis.url,
                "CACHE_BACKEND": "redis",
                "PUBSUB_BACKEND": "redis",
                "RATE_LIMIT_BACKEND": "redis",
            }
            redis_users = await make_users(options.users, "chaos-redis")
            redis_phase = await phase(
                redis_env,
                redis_users,
                [("redis stopped (redis backends)", lambda: stop_redis(redis, 5))],
                settle=options.settle,
            )
            drain_started = time.monotonic()
            jobs_left = await unfinished_jobs(dsn, within=600)
            drained_in = time.monotonic() - drain_started
            print(await job_figures(dsn))
        lost = await missing_writes(dsn, pg_phase.load) + await missing_writes(
            dsn, redis_phase.load
        )
    finally:
        redis.stop()
        postgres.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return report(options, [pg_phase, redis_phase], lost, jobs_left, drained_in)


def report(
    options: argparse.Namespace,
    phases: list[Phase],
    lost: int,
    jobs_left: dict[str, int],
    drained_in: float,
) -> bool:
    print(
        f"chaos run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {options.users} writers"
    )
    for one in phases:
        for fault in one.reports:
            print(fault.line())
            for outcome in fault.violations[:3]:
                print(f"    violation: {outcome.route} -> {outcome.status} {outcome.detail!r}")
        for line in one.server_errors[:2]:
            print(f"    server: {line[-1500:]}")
        if one.events_missing:
            print(f"    task events never seen by the SSE clients: {one.events_missing}")
    writes = sum(len(ids) for one in phases for ids in one.load.written.values())
    requests = sum(len(one.load.outcomes) for one in phases)
    reconnects = sum(f.reconnects for one in phases for f in one.followers.values())
    refusals = sum((f.refusals for one in phases for f in one.followers.values()), Counter[int]())
    missing_events = sum(one.events_missing for one in phases)
    same = all(one.same_process for one in phases)
    violations = sum(len(one.violations) for one in phases)
    print(
        f"requests: {requests}; tasks created with a 2xx: {writes}; "
        f"missing from the database: {lost}"
    )
    print(
        f"SSE: {reconnects} reconnects with Last-Event-ID, refused {dict(refusals)}; "
        f"task events never seen: {missing_events}"
    )
    print(f"jobs not succeeded after the drain ({drained_in:.0f} s): {jobs_left or 'none'}")
    print(f"app processes survived every fault without a restart: {same}")
    return not (violations or lost or missing_events or jobs_left or not same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20, help="writers, each with an SSE client")
    parser.add_argument("--settle", type=float, default=5, help="seconds of load after a fault")
    parser.add_argument("--fill", type=int, default=100_000, help="jobs added by the fill fault")
    options = parser.parse_args()
    raise_fd_limit()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    sys.exit(0 if asyncio.run(run(options)) else 1)


if __name__ == "__main__":
    main()
