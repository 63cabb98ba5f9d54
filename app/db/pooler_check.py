"""Before ``DB_POOL_MODE=pgbouncer``: what would break behind a transaction pooler.

``app db check-pooler`` runs ``check_pooler`` and exits 1 when a finding is an ``error``.
In transaction mode PgBouncer hands each transaction to whichever server connection is
free, so anything that lives in a *session* is lost or, worse, leaks to another client:

- session state: ``SET`` without ``LOCAL``, ``set_config(..., false)``, session advisory
  locks, temporary tables, ``WITH HOLD`` cursors, ``LISTEN``, SQL ``PREPARE`` — looked for
  in pg_stat_statements (statements this database ran) and in what sessions hold right now
  (advisory locks of idle sessions, temporary tables). pgfirst's own session statements
  (the notifier's LISTEN, the claim connection's SET) go to DATABASE_DIRECT_URL, and are
  not reported;
- LISTEN needs DATABASE_DIRECT_URL: without it the notifier polls (job pickup waits up to
  JOBS_POLL_INTERVAL, the in-process cache tier is bypassed, the Postgres pub/sub broker
  delivers no live events);
- prepared statements: PgBouncer < 1.21 (or ``max_prepared_statements = 0``) cannot keep
  them, so asyncpg's statement cache must be off — which DB_POOL_MODE=pgbouncer does;
  pointing DATABASE_URL at a pooler with DB_POOL_MODE=direct fails under load with
  ``prepared statement "__asyncpg_stmt_N__" already exists``;
- sizes: every process opens up to DB_POOL_MAX client connections (``--instances``
  processes) against PgBouncer's ``max_client_conn``; ``default_pool_size`` server
  connections plus the direct ones must fit in the server's ``max_connections``.

PgBouncer's settings are read from its admin console (database ``pgbouncer``; the URL's
user must be in ``admin_users`` or ``stats_users``) with the bundled ``psql``, which speaks
the simple query protocol the console requires. When the console refuses, the checks that
need it say so (``unknown``) and the others still run.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass, replace
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.config import Settings
from app.db.embedded import bin_path

Status = Literal["ok", "info", "warn", "error", "unknown"]
CONNECT_TIMEOUT = 5.0
PREPARED_STATEMENTS_SINCE = (1, 21)

# Session-level statements, matched against pg_stat_statements' text (lower-cased).
SESSION_STATE = {
    "SET without LOCAL": r"^\s*set\s+(?!local\b|transaction\b|constraints\b)",
    "set_config(..., false)": r"set_config\s*\([^)]*,\s*false\s*\)",
    "session advisory lock": r"pg_(try_)?advisory_lock(_shared)?\s*\(",
    "temporary table": r"create\s+(global\s+|local\s+)?temp(orary)?\s+table",
    "WITH HOLD cursor": r"\bwith\s+hold\b",
    "LISTEN": r"^\s*listen\b",
    "SQL PREPARE": r"^\s*prepare\s",
}
# What pgfirst itself runs on its direct connections (never through the pooler).
OWN_DIRECT_STATEMENTS = (
    r"^\s*listen\s+\"?pgfirst",
    r"^\s*set (enable_sort|synchronous_commit) = (off|\$1)\s*$",
)
STATEMENTS_SQL = """
SELECT query, calls FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY calls DESC
"""
# An advisory lock held by a session that is not inside a transaction is a session lock.
SESSION_LOCKS_SQL = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND a.state = 'idle'
  AND a.datname = current_database()
"""
TEMP_TABLES_SQL = "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class PoolerTarget:
    """What is about to be flipped: the pooler URL, the direct URL, the app's pool."""

    database_url: str | None
    pooler_url: str | None
    direct_url: str | None
    pool_mode: str
    pool_max: int
    instances: int

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pooler_url: str | None = None, instances: int = 1
    ) -> PoolerTarget:
        """``pooler_url`` is the PgBouncer about to become DATABASE_URL (checked as if
        DB_POOL_MODE=pgbouncer); without it, DATABASE_URL is checked as it is set."""
        current = settings.database_url
        if pooler_url is None and settings.db_pool_mode == "pgbouncer":
            pooler_url = current
        direct = settings.database_direct_url or (current if current != pooler_url else None)
        return cls(
            database_url=current,
            pooler_url=pooler_url,
            direct_url=direct,
            pool_mode="pgbouncer" if pooler_url else settings.db_pool_mode,
            pool_max=settings.db_pool_max,
            instances=instances,
        )


def failed(findings: list[Finding]) -> bool:
    return any(finding.status == "error" for finding in findings)


def as_dicts(findings: list[Finding]) -> list[dict[str, str]]:
    return [asdict(finding) for finding in findings]


async def check_pooler(target: PoolerTarget) -> list[Finding]:
    findings: list[Finding] = []
    # DB_POOL_MODE=direct: is DATABASE_URL a PgBouncer all the same?
    current = target.database_url
    if target.pooler_url is None and current and await _pgbouncer_config(current) is not None:
        direct = None if target.direct_url == current else target.direct_url
        target = replace(target, pooler_url=current, direct_url=direct)
    bouncer = await _pgbouncer_config(target.pooler_url) if target.pooler_url else None
    findings += _pooler_findings(target, bouncer)
    findings += await _direct_findings(target)
    server = target.direct_url or target.pooler_url
    if server is not None:
        findings += await _session_state_findings(server)
        if bouncer is not None and target.direct_url is not None:
            findings += await _server_size_findings(target, bouncer)
    return findings


# --- the pooler ------------------------------------------------------------------------------


async def _pgbouncer_config(url: str) -> dict[str, str] | None:
    """PgBouncer's version and settings (SHOW CONFIG), or None when ``url`` is no PgBouncer.

    The admin console announces itself by ``server_version`` ("1.18.0/bouncer"); a real
    server, or a console that refuses this user, gives None or only the version.
    """
    admin_url = _with_database(url, "pgbouncer")
    try:
        conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT, statement_cache_size=0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:
        version = conn.get_settings().server_version
    finally:
        conn.terminate()  # the console speaks no extended protocol, not even for goodbye
    if not version.endswith("/bouncer"):
        return None
    config = {"version": version.removesuffix("/bouncer")}
    config.update(await _show_config(admin_url))
    return config


async def _show_config(admin_url: str) -> dict[str, str]:
    process = await asyncio.create_subprocess_exec(
        str(bin_path("psql")),
        "-X",
        "-A",
        "-t",
        "-F",
        "\t",
        "-c",
        "SHOW CONFIG",
        admin_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    output, _ = await process.communicate()
    config: dict[str, str] = {}
    for line in output.decode(errors="replace").splitlines():
        key, _, rest = line.partition("\t")
        if key:
            config[key] = rest.split("\t", 1)[0]
    return config


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _pooler_findings(target: PoolerTarget, bouncer: dict[str, str] | None) -> list[Finding]:
    if target.pooler_url is None:
        return [Finding("pooler", "info", "no pooler given (--pooler-url, or DB_POOL_MODE)")]
    if bouncer is None:
        return [
            Finding(
                "pooler",
                "unknown",
                "no PgBouncer admin console at the pooler URL (not a PgBouncer, or its "
                "user is not in admin_users/stats_users): version and sizes unchecked",
            )
        ]
    findings = [Finding("pooler", "ok", f"PgBouncer {bouncer['version']}")]
    mode = bouncer.get("pool_mode", "")
    if mode == "statement":
        findings.append(
            Finding("pool_mode", "error", "statement mode breaks every multi-statement transaction")
        )
    elif mode == "session":
        findings.append(
            Finding("pool_mode", "warn", "session mode: one server connection per client")
        )
    elif mode:
        findings.append(Finding("pool_mode", "ok", mode))
    findings.append(_prepared_statement_finding(target, bouncer))
    max_clients = int(bouncer.get("max_client_conn", "0") or 0)
    wanted = target.instances * target.pool_max
    if max_clients:
        status: Status = "error" if wanted > max_clients else "ok"
        findings.append(
            Finding(
                "max_client_conn",
                status,
                f"{target.instances} process(es) x DB_POOL_MAX {target.pool_max} = {wanted} "
                f"client connections; max_client_conn = {max_clients}",
            )
        )
    return findings


def _prepared_statement_finding(target: PoolerTarget, bouncer: dict[str, str]) -> Finding:
    kept = int(bouncer.get("max_prepared_statements", "0") or 0)
    supported = _version(bouncer["version"]) >= PREPARED_STATEMENTS_SINCE and kept > 0
    if target.pool_mode != "pgbouncer" and not supported:
        return Finding(
            "prepared statements",
            "error",
            "asyncpg's statement cache is on with DB_POOL_MODE=direct, and this PgBouncer "
            "cannot keep prepared statements: set DB_POOL_MODE=pgbouncer",
        )
    if supported:
        return Finding(
            "prepared statements",
            "info",
            f"max_prepared_statements = {kept}: this PgBouncer keeps prepared statements "
            "(docs/scaling.md: what changes)",
        )
    return Finding(
        "prepared statements",
        "ok",
        "not kept by this PgBouncer; DB_POOL_MODE=pgbouncer turns the statement cache off",
    )


# --- the direct URL --------------------------------------------------------------------------


async def _direct_findings(target: PoolerTarget) -> list[Finding]:
    if target.pool_mode != "pgbouncer":
        return []
    if target.direct_url is None:
        return [
            Finding(
                "direct URL",
                "warn",
                "no DATABASE_DIRECT_URL: no LISTEN, the notifier polls (job pickup waits up "
                "to JOBS_POLL_INTERVAL, no in-process cache tier, no live Postgres pub/sub)",
            )
        ]
    if await _pgbouncer_config(target.direct_url) is not None:
        return [
            Finding(
                "direct URL",
                "error",
                "DATABASE_DIRECT_URL is a PgBouncer too: LISTEN would be lost",
            )
        ]
    try:
        conn = await asyncpg.connect(target.direct_url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return [Finding("direct URL", "error", f"cannot connect: {exc}")]
    await conn.close()
    return [Finding("direct URL", "ok", "reaches the server itself (LISTEN works)")]


# --- session state on the server -------------------------------------------------------------


async def _session_state_findings(server_url: str) -> list[Finding]:
    conn = await asyncpg.connect(server_url, timeout=CONNECT_TIMEOUT, statement_cache_size=0)
    try:
        findings = [await _statements_finding(conn)]
        locks = await conn.fetchval(SESSION_LOCKS_SQL)
        findings.append(
            Finding(
                "session advisory locks",
                "error" if locks else "ok",
                f"{locks} held by idle sessions now" if locks else "none held now",
            )
        )
        temp = await conn.fetchval(TEMP_TABLES_SQL)
        findings.append(
            Finding(
                "temporary tables",
                "error" if temp else "ok",
                f"{temp} exist now" if temp else "none exist now",
            )
        )
    finally:
        await conn.close()
    return findings


async def _statements_finding(conn: asyncpg.Connection) -> Finding:
    try:
        rows = await conn.fetch(STATEMENTS_SQL)
    except asyncpg.PostgresError:
        return Finding(
            "session statements",
            "unknown",
            "pg_stat_statements is not installed here: statements not checked",
        )
    seen: list[str] = []
    for row in rows:
        text = " ".join(str(row["query"]).split()).lower()
        if any(re.search(own, text) for own in OWN_DIRECT_STATEMENTS):
            continue
        for kind, pattern in SESSION_STATE.items():
            if re.search(pattern, text):
                seen.append(f"{kind}: {text[:80]!r} ({row['calls']} calls)")
                break
    if not seen:
        return Finding("session statements", "ok", "none in pg_stat_statements")
    return Finding("session statements", "error", "; ".join(seen[:5]))


async def _server_size_findings(target: PoolerTarget, bouncer: dict[str, str]) -> list[Finding]:
    assert target.direct_url is not None
    conn = await asyncpg.connect(target.direct_url, timeout=CONNECT_TIMEOUT)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await conn.close()
    pool = int(bouncer.get("default_pool_size", "0") or 0)
    pool += int(bouncer.get("reserve_pool_size", "0") or 0)
    # Each process keeps its notifier's LISTEN on a direct connection, a worker its claim
    # loop's session too.
    direct = 2 * target.instances
    usable = limit - reserved
    status: Status = "error" if pool + direct > usable else "ok"
    return [
        Finding(
            "server connections",
            status,
            f"default_pool_size + reserve_pool_size {pool} + direct {direct} per database "
            f"and user; server allows {usable}",
        )
    ]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))
