"""What only a running process can measure, written where every other process can read it.

HTTP latencies and statuses (the Prometheus registry of app/observability/metrics.py),
pool waits, cache reads, waits and hot keys (app/cache/) and host CPU and memory
live in each process's memory. ``app signals`` runs in a process of its own and the
sampling job in a worker, so neither could see them. Each web process therefore runs a
``ProcessReporter``: every SIGNAL_REPORT_SECONDS it snapshots its cumulative counters,
keeps the snapshots of the last SIGNAL_WINDOW_SECONDS, and upserts the difference between
the newest and the oldest (histogram buckets, request and error counts, cache reads and
waits, CPU time) into its row of ``signal_process_reports``. The advisor adds up the rows of every
process that reported within three intervals (``combine``): bucket counts add, so the
cluster-wide p99 is computed from the summed histogram, not averaged from each process's.

Streaming routes (SSE, WebSocket) are left out: a stream's duration is how long a client
stayed, not how slow the server was. So are probes and scrapes (/healthz, /readyz,
/metrics): a load balancer's polling is not traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from app.cache import Cache
from app.config import Settings
from app.db import Database
from app.observability.metrics import (
    DB_POOL_ACQUIRE_SECONDS,
    HTTP_REQUEST_SECONDS,
    HTTP_REQUESTS,
)

log = logging.getLogger(__name__)

LEFT_OUT_ROUTES = frozenset({"/api/events", "/api/ws", "/healthz", "/readyz", "/metrics"})
UPSERT_REPORT = """
INSERT INTO signal_process_reports (process, reported_at, report) VALUES ($1, now(), $2)
ON CONFLICT (process) DO UPDATE SET reported_at = now(), report = EXCLUDED.report
"""
DELETE_REPORT = "DELETE FROM signal_process_reports WHERE process = $1"
# Processes that reported within three intervals are alive; the rest are ignored.
LIVE_REPORTS = """
SELECT process, report FROM signal_process_reports
WHERE reported_at > now() - make_interval(secs => $1)
"""
PRUNE_REPORTS = """
DELETE FROM signal_process_reports WHERE reported_at < now() - make_interval(secs => $1)
"""

Buckets = dict[str, float]


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    http: Buckets
    requests: float
    errors: float
    pool: Buckets
    cache: dict[str, float]
    cache_waits: float  # reads that found every cache connection busy (batched keys)
    cpu: tuple[float, float] | None  # (busy, total) clock ticks of the host


class ProcessReporter:
    """One per web process: ``start()`` in the lifespan, ``stop()`` removes its row."""

    def __init__(self, db: Database, cache: Cache | None, settings: Settings, role: str = "web"):
        self.db = db
        self.cache = cache
        self.settings = settings
        self.role = role
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._snapshots: deque[Snapshot] = deque()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._snapshots.append(await self._snapshot())
        self._task = asyncio.create_task(self._run(), name="signal-reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self.db.acquire() as conn:
                await conn.execute(DELETE_REPORT, self.process)
        except Exception:  # the database may be the thing going away
            log.warning("signals: could not remove this process's report", exc_info=True)

    async def report(self) -> dict[str, Any]:
        """Snapshot now, write the window's report, and return it."""
        now = await self._snapshot()
        window = self.settings.signal_window_seconds
        snapshots = self._snapshots
        while len(snapshots) > 1 and snapshots[1].at <= now.at - window:
            snapshots.popleft()
        report = _difference(snapshots[0], now)
        report["role"] = self.role
        report["hot_keys"] = self.cache.hot_keys() if self.cache is not None else []
        pools = [s for s in self.db.stats() if s.role == "primary"]
        report["pool"]["in_use"] = sum(s.in_use for s in pools)
        report["pool"]["max"] = sum(s.max_size for s in pools)
        report["host"]["memory_percent"] = await asyncio.to_thread(_memory_percent)
        snapshots.append(now)
        async with self.db.acquire() as conn:
            await conn.execute(UPSERT_REPORT, self.process, orjson.dumps(report).decode())
        return report

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.signal_report_seconds)
            try:
                await self.report()
            except Exception:
                log.warning("signals: process report failed; retrying next interval", exc_info=True)

    async def _snapshot(self) -> Snapshot:
        http: Buckets = {}
        for metric in HTTP_REQUEST_SECONDS.collect():
            for sample in metric.samples:
                if (
                    sample.name.endswith("_bucket")
                    and sample.labels["route"] not in LEFT_OUT_ROUTES
                ):
                    le = sample.labels["le"]
                    http[le] = http.get(le, 0.0) + sample.value
        requests = errors = 0.0
        for metric in HTTP_REQUESTS.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["route"] not in LEFT_OUT_ROUTES:
                    requests += sample.value
                    if sample.labels["status"].startswith("5"):
                        errors += sample.value
        pool: Buckets = {}
        for metric in DB_POOL_ACQUIRE_SECONDS.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    pool[sample.labels["le"]] = sample.value
        cache: dict[str, float] = {}
        cache_waits = 0.0
        if self.cache is not None:
            for (_, outcome), count in dict(self.cache.reads).items():
                cache[outcome] = cache.get(outcome, 0.0) + count
            if self.cache.backend is not None:
                cache_waits = float(self.cache.backend.read_batches()[1])
        cpu = await asyncio.to_thread(_cpu_ticks)
        return Snapshot(time.monotonic(), http, requests, errors, pool, cache, cache_waits, cpu)


def _difference(old: Snapshot, new: Snapshot) -> dict[str, Any]:
    def delta(a: Buckets, b: Buckets) -> list[list[Any]]:
        return [[le, b[le] - a.get(le, 0.0)] for le in sorted(b, key=_bound)]

    cpu = None
    if old.cpu and new.cpu and new.cpu[1] > old.cpu[1]:
        cpu = round(100 * (new.cpu[0] - old.cpu[0]) / (new.cpu[1] - old.cpu[1]), 2)
    return {
        "window_seconds": round(new.at - old.at, 3),
        "http": {
            "buckets": delta(old.http, new.http),
            "requests": new.requests - old.requests,
            "errors": new.errors - old.errors,
        },
        "pool": {"buckets": delta(old.pool, new.pool)},
        "cache": {k: v - old.cache.get(k, 0.0) for k, v in new.cache.items()},
        "cache_waits": new.cache_waits - old.cache_waits,
        "host": {"cpu_percent": cpu},
    }


def _bound(le: str) -> float:
    return float("inf") if le == "+Inf" else float(le)


def _cpu_ticks() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _memory_percent() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            values = {line.split(":")[0]: float(line.split()[1]) for line in meminfo if ":" in line}
        return round(100 * (1 - values["MemAvailable"] / values["MemTotal"]), 2)
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


# --- reading the reports of every live process ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Combined:
    """The live processes' reports added up."""

    processes: int
    window_seconds: float
    http_buckets: list[tuple[float, float]]
    requests: float
    errors: float
    pool_buckets: list[tuple[float, float]]
    pool_in_use: float
    pool_max: float
    cache: dict[str, float]
    cache_waits: float
    hot_keys: list[tuple[str, float]]
    cpu_percent: float | None
    memory_percent: float | None


async def live_reports(db: Database, settings: Settings) -> Combined:
    async with db.acquire() as conn:
        rows = await conn.fetch(LIVE_REPORTS, settings.signal_report_seconds * 3)
    return combine([orjson.loads(row["report"]) for row in rows])


async def prune_reports(db: Database, settings: Settings) -> int:
    async with db.acquire() as conn:
        status = await conn.execute(PRUNE_REPORTS, settings.signal_report_seconds * 10)
    return int(status.split()[-1])


def combine(reports: list[dict[str, Any]]) -> Combined:
    def add(target: dict[float, float], buckets: list[list[Any]]) -> None:
        for le, count in buckets:
            target[_bound(le)] = target.get(_bound(le), 0.0) + count

    http: dict[float, float] = {}
    pool: dict[float, float] = {}
    cache: dict[str, float] = {}
    keys: dict[str, float] = {}
    cpu: list[float] = []
    memory: list[float] = []
    for report in reports:
        add(http, report["http"]["buckets"])
        add(pool, report["pool"]["buckets"])
        for outcome, count in report["cache"].items():
            cache[outcome] = cache.get(outcome, 0.0) + count
        # The same key read by several processes is one hot key: reads add up.
        for key, count in report["hot_keys"]:
            keys[key] = keys.get(key, 0.0) + count
        if report["host"].get("cpu_percent") is not None:
            cpu.append(report["host"]["cpu_percent"])
        if report["host"].get("memory_percent") is not None:
            memory.append(report["host"]["memory_percent"])
    return Combined(
        processes=len(reports),
        window_seconds=max((r["window_seconds"] for r in reports), default=0.0),
        http_buckets=sorted(http.items()),
        requests=sum(r["http"]["requests"] for r in reports),
        errors=sum(r["http"]["errors"] for r in reports),
        pool_buckets=sorted(pool.items()),
        pool_in_use=sum(r["pool"].get("in_use", 0) for r in reports),
        pool_max=sum(r["pool"].get("max", 0) for r in reports),
        cache=cache,
        # .get: a process still running the previous release reports no waits.
        cache_waits=sum(r.get("cache_waits", 0.0) for r in reports),
        hot_keys=sorted(keys.items(), key=lambda item: item[1], reverse=True)[:10],
        cpu_percent=max(cpu) if cpu else None,
        memory_percent=max(memory) if memory else None,
    )


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, linear within a bucket (as Prometheus)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def count_above(buckets: list[tuple[float, float]], seconds: float) -> float:
    """Observations above the largest bucket bound at or under ``seconds``."""
    if not buckets:
        return 0.0
    under = max((count for bound, count in buckets if bound <= seconds), default=0.0)
    return buckets[-1][1] - under
