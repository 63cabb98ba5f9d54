"""A local PgBouncer in transaction mode in front of a PostgreSQL, for tests, benchmarks and
local scenarios (``DB_POOL_MODE=pgbouncer``).

    bouncer = LocalPgBouncer(run_dir, server_dsn="postgresql://postgres@/postgres?host=/sock")
    bouncer.start()
    url = bouncer.dsn("pgfirst")      # postgresql://postgres@127.0.0.1:<port>/pgfirst

Any database name is passed through to the server (``* =`` in ``[databases]``), with
``auth_type = any``: the pooler logs in as the server DSN's user whatever the client says,
which is what a test needs and never what production wants (there: ``auth_type =
scram-sha-256`` with an ``auth_query`` or ``auth_file``). Listening is TCP on 127.0.0.1
only. As root the pooler runs as the embedded server's OS user, which can reach the server's
private socket directory; PgBouncer refuses to run as root anyway.

``max_prepared_statements`` needs PgBouncer >= 1.21; Debian 12 ships 1.18, so it is left
out unless asked for (``prepared_statements=200``) and the app then runs with asyncpg's
statement cache off. ``version()`` tells which one is installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from app.db.embedded import OS_USER

START_TIMEOUT_SECONDS = 10
# What asyncpg and libpq clients send at startup that PgBouncer does not track itself.
IGNORED_STARTUP_PARAMETERS = "extra_float_digits,options,statement_timeout,search_path"


class PgBouncerError(RuntimeError):
    pass


def pgbouncer_executable() -> str:
    """Path of ``pgbouncer``: PATH, else Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        raise PgBouncerError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    return found


def pgbouncer_version() -> tuple[int, int]:
    output = subprocess.run(  # noqa: S603 - fixed binary, no shell
        [pgbouncer_executable(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    if match is None:
        raise PgBouncerError(f"unrecognised pgbouncer --version output: {output!r}")
    return int(match[1]), int(match[2])


class LocalPgBouncer:
    """One pgbouncer process in transaction mode; ``stop()`` ends it, ``start()`` again."""

    def __init__(
        self,
        run_dir: Path,
        *,
        server_dsn: str,
        port: int | None = None,
        default_pool_size: int = 20,
        max_client_conn: int = 1000,
        prepared_statements: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.server_dsn = server_dsn
        self.port = port or _free_port()
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.prepared_statements = prepared_statements
        self._process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self._server_user()}@127.0.0.1:{self.port}/{database}"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "pgbouncer.ini"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "pgbouncer.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start (no-op when running); return the DSN of database ``postgres`` through it."""
        if self.is_running():
            return self.dsn()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        user = _run_as()
        if user is not None:
            os.chown(self.run_dir, user.pw_uid, user.pw_gid)
            for path in (self.config_file, self.log_file):
                path.touch()
                os.chown(path, user.pw_uid, user.pw_gid)
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
            [pgbouncer_executable(), str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PgBouncerError(f"pgbouncer did not start:\n{self.log_tail()}")
            time.sleep(0.02)
        return self.dsn()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGINT: PgBouncer's immediate shutdown (SIGTERM waits for clients to leave).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no pgbouncer log)"

    def _server_user(self) -> str:
        return unquote(urlsplit(self.server_dsn).username or "postgres")

    def _config(self) -> str:
        parts = urlsplit(self.server_dsn)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        port = query.get("port", [str(parts.port or 5432)])[0]
        target = f"host={host} port={port} user={self._server_user()}"
        if parts.password:
            target += f" password={unquote(parts.password)}"
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "any",
            "pool_mode": "transaction",
            "max_client_conn": str(self.max_client_conn),
            "default_pool_size": str(self.default_pool_size),
            "ignore_startup_parameters": IGNORED_STARTUP_PARAMETERS,
            "logfile": str(self.log_file),
            "log_connections": "0",
            "log_disconnections": "0",
            # Dropped test databases leave server connections behind; reconnect quickly.
            "server_login_retry": "1",
            "admin_users": self._server_user(),
        }
        if self.prepared_statements:
            settings["max_prepared_statements"] = str(self.prepared_statements)
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError as exc:
        raise PgBouncerError(
            f"as root, pgbouncer runs as {OS_USER} (made by the embedded server's first start)"
        ) from exc


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
