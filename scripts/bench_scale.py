"""Scaling switches, measured: read replicas (and their read-your-writes routing), PgBouncer.

    .venv/bin/python -m scripts.bench_scale [--parts replicas,routing,pgbouncer]
        [--duration 10] [--repeats 3] [--iterations 1000] [--blocks 15] [--jobs 20000]

Starts a throwaway embedded PostgreSQL 18 (fsync on) and a streaming replica of it made
with ``pg_basebackup -R`` (``app.db.embedded_replica``), both on this machine.

- ``replicas``: two `app serve` processes (one uvicorn worker each, production settings),
  one with DATABASE_URL only and one with DATABASE_REPLICA_URLS too, on the same servers
  and data (one user, 4 projects, 40 tasks). `wrk -t2 -c32` alternates between them, per
  repeat, on GET /api/tasks (the task list: served from the in-process cache by data
  version, so it reads the primary's version and no replica at all), GET /api/activity (a
  ``ReadConn`` route: one query per request, on the replica when there is one) and
  GET /api/search?q=... (a ``ReadConn`` full-text query). A third run of the replica
  server sends a ``pgfirst_lsn`` cookie with every request: the read-your-writes path as
  a client that wrote a moment ago takes it (the position is replayed, so the reads stay
  on the replica; the cost is the token's check and the comparison). Beside req/s and
  latency: statements per request on the primary and on the replica (pg_stat_statements),
  which is where a replica's worth shows on one machine: the load it takes off the primary.
- ``routing``: in one process, ``Database.acquire(read=True)`` + ``SELECT 1``, per call,
  without replicas, on a replica without a position, with a position the last health check
  already saw replayed, with a position that needs a ``pg_last_wal_replay_lsn()`` on the
  replica, and the write side: the ``pg_current_wal_insert_lsn()`` a writing request adds;
  then the parts without I/O: the routing decision itself, and signing + checking a token.
  The figures with a query ride on one loopback round trip, so on a busy machine their
  differences are within the noise; the parts without I/O are not.

- ``pgbouncer``: PgBouncer (the installed one; Debian 12: 1.18) in transaction mode in front
  of the primary (``app.db.embedded_pgbouncer``). Per call in one process, direct vs
  DB_POOL_MODE=pgbouncer (statement cache off, no reset on release): a primary-key read
  and a one-row UPDATE in a transaction; and `wrk` on GET /api/activity and
  GET /api/search against two `app serve` processes, one direct and one through the pooler.
- ``drain``: ``--jobs`` no-op jobs emptied by one burst worker (10 at a time), direct,
  behind the same PgBouncer with DATABASE_DIRECT_URL (the claim loop on its own direct
  session) and without it (each claim a pooled transaction with ``SET LOCAL``).

Prints medians of the repeats. On 2 cores the replica shares the CPU with the primary, the
app and wrk, so a replica adds no capacity here; see docs/benchmarks.md for what changes
when it has its own host.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from app.config import load_settings
from app.db import Database, migrate, routing
from app.db.embedded import EmbeddedPostgres
from app.db.embedded_replica import EmbeddedReplica
from scripts.bench_http import ensure_wrk, prepare, serve, wrk

SECRET = "bench-secret-key-that-is-long-enough-000000"  # noqa: S105 - bench_http.serve's key
DATABASE = "pgfirst"


@dataclass(frozen=True)
class Cluster:
    """A primary and one streaming replica on this machine, the app's database migrated."""

    primary: EmbeddedPostgres
    replica: EmbeddedReplica
    primary_url: str
    replica_url: str


@contextmanager
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="pgfirst-bench-scale-"))
    primary = EmbeddedPostgres(base / "primary")
    replica = EmbeddedReplica(base / "replica", primary=primary)
    try:
        admin = primary.ensure_running()
        asyncio.run(_create_database(admin))
        primary_url = admin.replace("/postgres?", f"/{DATABASE}?")
        migrate.upgrade(primary_url)
        replica_admin = replica.ensure_running()
        yield Cluster(
            primary, replica, primary_url, replica_admin.replace("/postgres?", f"/{DATABASE}?")
        )
    finally:
        replica.destroy()
        primary.destroy()
        shutil.rmtree(base, ignore_errors=True)


async def _create_database(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


async def _wal_position(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        position: int = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
        return position
    finally:
        await conn.close()


async def _caught_up(primary_url: str, replica_url: str) -> None:
    target = await _wal_position(primary_url)
    conn = await asyncpg.connect(replica_url)
    try:
        while (await conn.fetchval("SELECT pg_last_wal_replay_lsn()")) < target:  # noqa: ASYNC110 - polls another server
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _statements(pair: Cluster) -> tuple[int, int]:
    """Statements run so far on the primary and on the replica (pg_stat_statements)."""
    counts = []
    for dsn in (pair.primary_url, pair.replica_url):
        conn = await asyncpg.connect(dsn)
        try:
            counts.append(int(await conn.fetchval("SELECT sum(calls) FROM pg_stat_statements")))
        finally:
            await conn.close()
    return counts[0], counts[1]


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=30)


# --- part: replicas ----------------------------------------------------------------------

READ_ROUTES = {
    "GET /api/tasks": "/api/tasks",
    "GET /api/activity": "/api/activity",
    "GET /api/search": "/api/search?q=details",
}


def replica_throughput(pair: Cluster, duration: int, repeats: int) -> None:
    """req/s and latency of read routes with 0 and 1 replica, and with a position cookie."""
    direct, direct_url = serve(pair.primary_url)
    replicated, replicated_url = serve(pair.primary_url, DATABASE_REPLICA_URLS=pair.replica_url)
    try:
        token = prepare(direct_url)
        prepare_ready(replicated_url)
        asyncio.run(_caught_up(pair.primary_url, pair.replica_url))
        auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        results: dict[tuple[str, str], list[dict[str, object]]] = {}
        for _ in range(repeats):
            position = routing.sign_position(SECRET, asyncio.run(_wal_position(pair.primary_url)))
            cookie = auth + f'wrk.headers["Cookie"] = "pgfirst_lsn={position}"\n'
            for route, path in READ_ROUTES.items():
                for setup, base, script in (
                    ("0 replicas", direct_url, auth),
                    ("1 replica", replicated_url, auth),
                    ("1 replica + position", replicated_url, cookie),
                ):
                    before = asyncio.run(_statements(pair))
                    run = wrk(f"{base}{path}", duration, script)
                    after = asyncio.run(_statements(pair))
                    requests = int(str(run["statuses"]).split(" of ")[1].split()[0])
                    run["primary"] = (after[0] - before[0]) / requests
                    run["replica"] = (after[1] - before[1]) / requests
                    results.setdefault((route, setup), []).append(run)
    finally:
        _stop(direct)
        _stop(replicated)

    print(f"\nreplicas: wrk -t2 -c32 -d{duration}s, one uvicorn worker, medians of {repeats}")
    print("statements per request on each server, from pg_stat_statements")
    print(
        f"{'route':<20}{'setup':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'primary':>9}{'replica':>9}  statuses (last)"
    )
    for (route, setup), runs in results.items():
        rps, p50, p99, primary, replica = (
            statistics.median(float(str(r[k])) for r in runs)
            for k in ("rps", "p50", "p99", "primary", "replica")
        )
        print(
            f"{route:<20}{setup:<24}{rps:>9.0f}{p50:>9.1f}{p99:>9.1f}"
            f"{primary:>9.2f}{replica:>9.2f}  {runs[-1]['statuses']}"
        )


def prepare_ready(base: str) -> None:
    """Wait until a second server on the same data answers /readyz."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} did not become ready")


# --- part: routing -----------------------------------------------------------------------


@asynccontextmanager
async def _database(pair: Cluster, *, replicas: bool) -> AsyncIterator[Database]:
    settings = load_settings(
        env="test",
        database_url=pair.primary_url,
        database_replica_urls=[pair.replica_url] if replicas else [],
        secret_key=SECRET,
    )
    db = await Database.connect(settings, pair.primary_url)
    try:
        yield db
    finally:
        await db.close()


async def _per_call_us(call: Callable[[], Awaitable[object]], iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        await call()
    return (time.perf_counter() - started) / iterations * 1e6


async def _routing(pair: Cluster, iterations: int, blocks: int) -> dict[str, float]:
    """Median over ``blocks`` of the mean per call; variants interleave block by block, so
    a busy moment of a shared machine lands on all of them."""
    async with _database(pair, replicas=False) as plain, _database(pair, replicas=True) as db:
        assert db.replicas is not None
        replicas = db.replicas
        replica = replicas.replicas[0]
        replayed = await _wal_position(pair.primary_url)
        await _caught_up(pair.primary_url, pair.replica_url)
        await db.replicas.check()

        async def primary_read() -> None:
            async with plain.acquire(read=True) as conn:
                await conn.fetchval("SELECT 1")

        async def replica_read() -> None:
            async with db.acquire(read=True) as conn:
                await conn.fetchval("SELECT 1")

        async def known_replayed() -> None:
            with routing.routing_scope(routing.RequestRouting(min_lsn=replayed)):
                await replica_read()

        async def checked_on_replica() -> None:
            replica.replay_lsn = None  # as if the last check predates the write
            await known_replayed()

        async def decision_alone() -> None:
            with routing.routing_scope(routing.RequestRouting(min_lsn=replayed)):
                replicas._pick(replayed)

        async def token_round_trip() -> None:
            routing.read_position(SECRET, routing.sign_position(SECRET, replayed))

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "no replicas: primary": primary_read,
            "replica, no position": replica_read,
            "replica, position already seen replayed": known_replayed,
            "replica, position checked on the replica": checked_on_replica,
            "write side: pg_current_wal_insert_lsn()": db.wal_position,
            "the decision alone: request state + pick, no I/O": decision_alone,
            "sign and check a token": token_round_trip,
        }
        for call in variants.values():  # warm pools and statement caches
            await _per_call_us(call, 200)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(blocks):
            for name, call in variants.items():
                samples[name].append(await _per_call_us(call, iterations))
    return {name: statistics.median(values) for name, values in samples.items()}


def routing_overhead(pair: Cluster, iterations: int, blocks: int) -> None:
    """Per-call cost of each routing decision, in microseconds."""
    figures = asyncio.run(_routing(pair, iterations, blocks))
    base = figures["replica, no position"]
    print(f"\nrouting: medians of {blocks} interleaved blocks of {iterations} calls")
    header = "acquire(read=True) + SELECT 1, or the step alone"
    print(f"{header:<50}{'µs/call':>10}{'vs no position':>16}")
    for name, value in figures.items():
        delta = f"{value - base:+.1f}" if name.startswith("replica,") else ""
        print(f"{name:<50}{value:>10.1f}{delta:>16}")


# --- part: pgbouncer ---------------------------------------------------------------------

POOLED_ROUTES = {
    "GET /api/activity": "/api/activity",
    "GET /api/search": "/api/search?q=details",
}


@contextmanager
def pooler(pair: Cluster) -> Iterator[str]:
    """PgBouncer 1.x in transaction mode in front of the primary: the app database's URL."""
    from app.db.embedded_pgbouncer import LocalPgBouncer

    run_dir = Path(tempfile.mkdtemp(prefix="pgfirst-bench-pgbouncer-"))
    bouncer = LocalPgBouncer(run_dir, server_dsn=pair.primary.dsn())
    bouncer.start()
    try:
        yield bouncer.dsn(DATABASE)
    finally:
        bouncer.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


async def _pooled_calls(
    pair: Cluster, pooled_url: str, iterations: int, blocks: int
) -> dict[str, float]:
    """Per call, direct vs through PgBouncer: a primary-key read and a one-row transaction."""
    settings = {"env": "test", "secret_key": SECRET, "database_url": pair.primary_url}
    direct = await Database.connect(load_settings(**settings), pair.primary_url)
    behind = await Database.connect(
        load_settings(
            **{**settings, "database_url": pooled_url},
            db_pool_mode="pgbouncer",
            database_direct_url=pair.primary_url,
        ),
        pooled_url,
    )
    try:
        async with direct.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (id int PRIMARY KEY, n int)")
            await conn.execute(
                "INSERT INTO bench_rows SELECT g, 0 FROM generate_series(1, 1000) g "
                "ON CONFLICT DO NOTHING"
            )
        variants: dict[str, Callable[[], Awaitable[object]]] = {}
        for label, db in (("direct", direct), ("pgbouncer", behind)):

            async def read(db: Database = db) -> None:
                async with db.acquire() as conn:
                    await conn.fetchval("SELECT n FROM bench_rows WHERE id = $1", 42)

            async def write(db: Database = db) -> None:
                async with db.transaction() as conn:
                    await conn.execute("UPDATE bench_rows SET n = n + 1 WHERE id = $1", 7)

            variants[f"read by primary key, {label}"] = read
            variants[f"one-row update in a transaction, {label}"] = write
        for call in variants.values():
            await _per_call_us(call, 200)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(blocks):
            for name, call in variants.items():
                samples[name].append(await _per_call_us(call, iterations))
    finally:
        await asyncio.gather(direct.close(), behind.close())
    return {name: statistics.median(values) for name, values in samples.items()}


async def _drain(dsn: str, jobs: int, **overrides: object) -> float:
    """jobs/s of one burst worker emptying ``jobs`` no-op jobs."""
    from app.jobs import enqueue_many
    from app.jobs.worker import Worker
    from app.services import open_services

    settings = load_settings(
        env="test", secret_key=SECRET, database_url=dsn, log_level="WARNING", **overrides
    )
    async with open_services(settings, job_modules=["scripts.bench_scale_jobs"]) as services:
        await enqueue_many("bench.noop", [{} for _ in range(jobs)])
        started = time.perf_counter()
        await Worker(services.jobs, burst=True, concurrency=10).run()
        return jobs / (time.perf_counter() - started)


def pgbouncer_cost(
    pair: Cluster, duration: int, repeats: int, iterations: int, blocks: int
) -> None:
    """What DB_POOL_MODE=pgbouncer costs: per call and per HTTP request."""
    with pooler(pair) as pooled_url:
        figures = asyncio.run(_pooled_calls(pair, pooled_url, iterations, blocks))
        print(f"\npgbouncer: medians of {blocks} interleaved blocks of {iterations} calls")
        print(f"{'call':<50}{'µs/call':>10}")
        for name, value in figures.items():
            print(f"{name:<50}{value:>10.1f}")

        plain, plain_url = serve(pair.primary_url)
        pooled, pooled_base = serve(
            pooled_url, DB_POOL_MODE="pgbouncer", DATABASE_DIRECT_URL=pair.primary_url
        )
        try:
            token = prepare(plain_url)
            prepare_ready(pooled_base)
            auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
            results: dict[tuple[str, str], list[dict[str, object]]] = {}
            for _ in range(repeats):
                for route, path in POOLED_ROUTES.items():
                    for setup, base in (("direct", plain_url), ("pgbouncer", pooled_base)):
                        run = wrk(f"{base}{path}", duration, auth)
                        results.setdefault((route, setup), []).append(run)
        finally:
            _stop(plain)
            _stop(pooled)
    print(f"\nHTTP: wrk -t2 -c32 -d{duration}s, one uvicorn worker, medians of {repeats}")
    print(f"{'route':<20}{'setup':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses (last)")
    for (route, setup), runs in results.items():
        rps, p50, p99 = (
            statistics.median(float(str(r[k])) for r in runs) for k in ("rps", "p50", "p99")
        )
        print(f"{route:<20}{setup:<12}{rps:>9.0f}{p50:>9.1f}{p99:>9.1f}  {runs[-1]['statuses']}")


def drain_cost(pair: Cluster, repeats: int, jobs: int) -> None:
    """jobs/s of one burst worker: direct, behind PgBouncer with and without a direct URL."""
    with pooler(pair) as pooled_url:
        drain_setups: dict[str, tuple[str, dict[str, object]]] = {
            "direct": (pair.primary_url, {}),
            "pgbouncer, claims on DATABASE_DIRECT_URL": (
                pooled_url,
                {"db_pool_mode": "pgbouncer", "database_direct_url": pair.primary_url},
            ),
            "pgbouncer, no direct URL: pooled claims": (pooled_url, {"db_pool_mode": "pgbouncer"}),
        }
        drains: dict[str, list[float]] = {label: [] for label in drain_setups}
        for _ in range(repeats):
            for label, (dsn, overrides) in drain_setups.items():
                drains[label].append(asyncio.run(_drain(dsn, jobs, **overrides)))
        print(f"\njobs drain, {jobs} no-op jobs, one burst worker (10 at a time), medians")
        for label, rates in drains.items():
            print(f"{label:<50}{statistics.median(rates):>10.0f} jobs/s")


# --- main --------------------------------------------------------------------------------

PARTS = ("replicas", "routing", "pgbouncer", "drain")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs drained (drain)")
    options = parser.parse_args()
    parts = options.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if "replicas" in parts or "pgbouncer" in parts:
        ensure_wrk()
    with cluster() as pair:
        if "replicas" in parts:
            replica_throughput(pair, options.duration, options.repeats)
        if "routing" in parts:
            routing_overhead(pair, options.iterations, options.blocks)
        if "pgbouncer" in parts:
            pgbouncer_cost(
                pair, options.duration, options.repeats, options.iterations, options.blocks
            )
        if "drain" in parts:
            drain_cost(pair, options.repeats, options.jobs)


if __name__ == "__main__":
    main()
