"""The advisor: measure every signal, name the stage, and say which flag to flip.

``measure`` gathers the database's signals (database.py), the live processes' reports
(process.py) and two rates from counters kept between samples, then:

- hysteresis: a signal's flag is recommended only once it fired in this sample and the
  SIGNAL_HYSTERESIS_SAMPLES - 1 recorded before it — one burst never flips a backend;
- prerequisites: before DB_POOL_MODE=pgbouncer or DATABASE_REPLICA_URLS it checks what the
  switch needs and says what blocks it;
- "too early": a flag switched on while none of its signals fired within the retention.

With ``record=True`` (the periodic job) the sample is stored; ``app signals`` and
``GET /ops/signals`` measure without storing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.config import Settings
from app.db import Connection, Database
from app.signals import database as dbs
from app.signals import history, queue
from app.signals.application import application_signals
from app.signals.model import FIRED, SEVERITY, Report, Signal, Stage, signal, unknown_signal
from app.signals.process import live_reports

STAGE_NAMES = {1: "prototype", 2: "early revenue", 3: "product-market fit", 4: "scale"}
# What a flag is switched to, and the signals that call for it ("too early" without them).
FLAG_TARGETS = {
    "CACHE_BACKEND": "redis",
    "PUBSUB_BACKEND": "redis",
    "DB_POOL_MODE": "pgbouncer",
    "DATABASE_REPLICA_URLS": "one or more replica URLs",
    "JOBS_INLINE_WORKER": "false",
}
FLAG_SIGNALS = {
    "CACHE_BACKEND": ["cache.hot_keys", "cache.connection_waits", "db.slow_queries"],
    "PUBSUB_BACKEND": ["pubsub.publish_rate", "db.notify_queue_usage"],
    "DB_POOL_MODE": ["db.connections", "db.pool_wait"],
    "DATABASE_REPLICA_URLS": ["db.read_share"],
}
# Signals whose firing puts a deployment at a stage, strongest first.
STAGE_SIGNALS = {
    4: ["db.connections", "db.read_share", "db.largest_tables", "db.replica_lag"],
    3: [
        "cache.hot_keys",
        "cache.connection_waits",
        "jobs.queue_depth",
        "jobs.oldest_wait_seconds",
        "db.slow_queries",
        "pubsub.publish_rate",
        "db.notify_queue_usage",
        "http.latency_p99",
    ],
}
STAGE_REQUESTS_PER_MINUTE = {3: 1_000.0, 2: 10.0}
COUNTERS = ["statements.reads", "statements.total", "events.published"]
NO_PREVIOUS = "a rate needs a recorded sample (pgfirst.sample_signals, every minute)"
TOO_RECENT = "the last recorded sample is {age:.1f} s old; a rate needs {window:g} s"
SESSION_LOCKS = """
SELECT count(DISTINCT a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND a.state = 'idle' AND a.datname = current_database()
"""
WAL_LEVEL = "SELECT current_setting('wal_level')"


async def measure(db: Database, settings: Settings, *, record: bool = False) -> Report:
    now = datetime.now(UTC)
    s = settings
    async with db.transaction() as conn:
        # A backstop: no statement of the advisor may queue behind a lock (an ALTER TABLE,
        # a LOCK TABLE in a migration); it fails fast and the next sample tries again.
        await conn.execute("SET LOCAL lock_timeout = '1s'")
        signals = await dbs.connection_signals(conn, s)
        signals += await dbs.health_signals(conn, s)
        signals.append(await dbs.slow_query_signal(conn, s))
        signals += await queue.job_signals(conn, s)
        signals.append(await queue.default_partition_signal(conn, s))
        signals += await _rate_signals(conn, s, record=record)
        signals.append(await _replica_signal(conn, s))
    combined = await live_reports(db, s)
    signals += application_signals(combined, s)
    async with db.acquire() as conn:
        signals, advice = await _advise(conn, s, signals)
        if record:
            await history.record(conn, now, signals)
    signals.sort(key=lambda item: (SEVERITY[item.status], item.key))
    stage = _stage(signals, s, combined.requests, combined.window_seconds)
    return Report(stage, signals, flags(s), advice, now)


def flags(s: Settings) -> dict[str, str]:
    """The flags in effect (replica URLs counted, never shown: they hold passwords)."""
    replicas = len(s.database_replica_urls)
    return {
        "CACHE_BACKEND": s.cache_backend,
        "PUBSUB_BACKEND": s.pubsub_backend,
        "RATE_LIMIT_BACKEND": s.rate_limit_backend,
        "DB_POOL_MODE": s.db_pool_mode,
        "DATABASE_REPLICA_URLS": f"{replicas} replica{'s' if replicas != 1 else ''}",
        "JOBS_INLINE_WORKER": str(s.run_inline_worker).lower(),
    }


def _flag_on(s: Settings, flag: str) -> bool:
    return {
        "CACHE_BACKEND": s.cache_backend == "redis",
        "PUBSUB_BACKEND": s.pubsub_backend == "redis",
        "DB_POOL_MODE": s.db_pool_mode == "pgbouncer",
        "DATABASE_REPLICA_URLS": bool(s.database_replica_urls),
        "JOBS_INLINE_WORKER": not s.run_inline_worker,
    }[flag]


async def _rate_signals(conn: Connection, s: Settings, *, record: bool) -> list[Signal]:
    """Read share and publish rate: counters now against those of the last recorded sample."""
    statements = await dbs.statement_counters(conn)
    published = await dbs.events_published(conn)
    previous = await history.read_counters(conn, COUNTERS)
    current = {"events.published": published}
    if statements is not None:
        current |= {"statements.reads": statements[0], "statements.total": statements[1]}
    if record:
        await history.write_counters(conn, current)

    # A rate over a few milliseconds is noise (one burst reads as thousands per second), so
    # a sample younger than the window grades nothing.
    window = s.signal_rate_min_window_seconds
    ages = [previous[name][1] for name in COUNTERS if name in previous]
    no_rate = (
        TOO_RECENT.format(age=min(ages), window=window)
        if ages and min(ages) < window
        else NO_PREVIOUS
    )

    def rate(name: str) -> tuple[float, float] | None:
        if name not in previous or name not in current:
            return None
        value, age = previous[name]
        if age <= 0 or age < window:
            return None
        return max(current[name] - value, 0.0), age

    found: list[Signal] = []
    total, reads = rate("statements.total"), rate("statements.reads")
    key, warn, critical = "db.read_share", s.signal_read_share, s.signal_read_share_critical
    if statements is None:
        why = await dbs.statements_available(conn) or ""
        found.append(unknown_signal(key, "ratio", warn, critical, 0, why))
    elif total is None or reads is None:
        found.append(unknown_signal(key, "ratio", warn, critical, 0, no_rate))
    else:
        per_second = total[0] / total[1]
        loaded = per_second >= s.signal_read_min_statements_per_second
        share = round(reads[0] / total[0], 4) if total[0] else 0.0
        found.append(
            signal(
                key,
                share,
                "ratio",
                warn,
                critical,
                round(total[1], 3),
                fired="reads dominate under load: route lag-tolerant reads to a replica "
                "(DATABASE_REPLICA_URLS) once the primary's CPU is high too",
                ok="writes keep a fair share"
                if loaded
                else f"under {s.signal_read_min_statements_per_second:g} statements/s: no load "
                "to move",
                flag="DATABASE_REPLICA_URLS",
                details=[f"{per_second:,.1f} statements/s"],
            )
            if loaded
            else Signal(
                key,
                "ok",
                share,
                "ratio",
                warn,
                critical,
                round(total[1], 3),
                f"under {s.signal_read_min_statements_per_second:g} statements/s: no load to move",
                None,
                [f"{per_second:,.1f} statements/s"],
            )
        )
    key = "pubsub.publish_rate"
    warn, critical = s.signal_publish_rate_warn, s.signal_publish_rate_critical
    events = rate("events.published")
    if s.pubsub_backend != "postgres":
        found.append(
            unknown_signal(
                key,
                "events/s",
                warn,
                critical,
                0,
                "published through Redis: read Redis's own statistics",
            )
        )
    elif events is None:
        found.append(unknown_signal(key, "events/s", warn, critical, 0, no_rate))
    else:
        found.append(
            signal(
                key,
                round(events[0] / events[1], 3),
                "events/s",
                warn,
                critical,
                round(events[1], 3),
                fired="publishers contend on NOTIFY's commit lock: move pub/sub to Redis "
                "(PUBSUB_BACKEND=redis)",
                ok="NOTIFY carries this rate easily",
                flag="PUBSUB_BACKEND",
            )
        )
    return found


async def _replica_signal(conn: Connection, s: Settings) -> Signal:
    key, warn, critical = (
        "db.replica_lag",
        s.signal_replica_lag_seconds,
        s.signal_replica_lag_critical_seconds,
    )
    replicas, lag_seconds, lag_bytes = await dbs.replication(conn)
    if replicas == 0:
        if s.database_replica_urls:
            return Signal(
                key,
                "critical",
                None,
                "seconds",
                warn,
                critical,
                0,
                "DATABASE_REPLICA_URLS is set but no replica streams from this "
                "primary: reads fall back to the primary; repair the replica",
            )
        return Signal(
            key, "ok", None, "seconds", warn, critical, 0, "no replica streams from this primary"
        )
    return signal(
        key,
        round(lag_seconds or 0.0, 3),
        "seconds",
        warn,
        critical,
        0,
        fired="a replica lags: reads past DATABASE_REPLICA_MAX_LAG_SECONDS go to the "
        "primary; check the replica's disk and network, and long queries on it",
        ok="replicas keep up",
        details=[f"{replicas} replica(s); {lag_bytes or 0:,.0f} bytes behind at most"],
    )


async def blockers(conn: Connection, s: Settings, flag: str) -> list[str]:
    """What must be true before ``flag`` can be flipped, and is not."""
    found: list[str] = []
    if flag == "DB_POOL_MODE":
        if not s.database_direct_url:
            found.append(
                "DATABASE_DIRECT_URL is unset: LISTEN (job wake-ups, cache "
                "invalidation, pub/sub) needs a direct connection past the pooler"
            )
        holders = int(await conn.fetchval(SESSION_LOCKS))
        if holders:
            found.append(
                f"{holders} idle session(s) hold advisory locks: session state "
                "does not survive transaction pooling"
            )
    elif flag == "DATABASE_REPLICA_URLS":
        if await conn.fetchval(WAL_LEVEL) == "minimal":
            found.append("wal_level=minimal: a streaming replica needs wal_level=replica")
        replicas, _, _ = await dbs.replication(conn)
        if replicas == 0:
            found.append(
                "no replica streams from this primary: create one and check it "
                "is reachable (docs/replicas.md)"
            )
    return found


async def _advise(
    conn: Connection, s: Settings, signals: list[Signal]
) -> tuple[list[Signal], list[str]]:
    keys = [item.key for item in signals]
    needed = s.signal_hysteresis_samples
    recent = await history.recent_statuses(conn, keys, needed - 1)
    fired_before = await history.ever_fired(conn, keys)
    advised: list[Signal] = []
    advice: list[str] = []
    for item in signals:
        flag = item.flag
        if flag is None or not item.fired:
            advised.append(item)
            continue
        if flag == "DATABASE_REPLICA_URLS" and not _cpu_high(signals):
            advised.append(
                item.with_advice(item.recommendation + " (host.cpu is not high yet)", None)
            )
            continue
        past = recent.get(item.key, [])
        held = 1 + len([status for status in past[: needed - 1] if status in FIRED])
        if held < needed or len(past) < needed - 1:
            text = f"{item.recommendation} — fired {held} of {needed} samples; not yet"
            advised.append(item.with_advice(text, None))
            continue
        if _flag_on(s, flag):
            advised.append(
                item.with_advice(f"{item.recommendation} ({flag} is already switched)", None)
            )
            continue
        blocked = await blockers(conn, s, flag)
        text = f"{item.recommendation}; held {needed} samples: set {flag}={FLAG_TARGETS[flag]}"
        if blocked:
            text += "; first: " + "; ".join(blocked)
        advised.append(item.with_advice(text, flag))
        advice.append(
            f"{item.key} {item.status}: set {flag}={FLAG_TARGETS[flag]}"
            + (f" (blocked: {'; '.join(blocked)})" if blocked else "")
        )
    firing = {item.key for item in signals if item.fired}
    for flag, watched in FLAG_SIGNALS.items():
        if _flag_on(s, flag) and not (set(watched) & (fired_before | firing)):
            advice.append(
                f"too early: {flag} is on while {', '.join(watched)} never fired "
                f"in the last {s.signal_retention_hours:g} h"
            )
    return advised, list(dict.fromkeys(advice))


def _cpu_high(signals: list[Signal]) -> bool:
    return any(item.key == "host.cpu" and item.fired for item in signals)


def _stage(signals: list[Signal], s: Settings, requests: float, window: float) -> Stage:
    fired = {item.key for item in signals if item.fired}
    per_minute = requests * 60 / window if window > 0 else 0.0
    reasons: dict[int, list[str]] = {4: [], 3: [], 2: []}
    for number, keys in STAGE_SIGNALS.items():
        reasons[number] += [f"{key} fired" for key in keys if key in fired]
    if s.database_replica_urls or s.db_pool_mode == "pgbouncer":
        reasons[4].append("replicas or a pooler in use")
    if "redis" in (s.cache_backend, s.pubsub_backend):
        reasons[3].append("a Redis backend in use")
    for number, threshold in STAGE_REQUESTS_PER_MINUTE.items():
        if per_minute >= threshold:
            reasons[number].append(f"{per_minute:,.0f} requests/min (>= {threshold:,.0f})")
            break
    if fired - {key for keys in STAGE_SIGNALS.values() for key in keys}:
        reasons[2].append("signals fired: " + ", ".join(sorted(fired)))
    for number in (4, 3, 2):
        if reasons[number]:
            return Stage(number, STAGE_NAMES[number], reasons[number])
    return Stage(1, STAGE_NAMES[1], ["little traffic and no signal fired: nothing to add yet"])
