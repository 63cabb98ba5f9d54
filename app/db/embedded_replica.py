"""A streaming replica of an embedded PostgreSQL, for tests, benchmarks and local scenarios.

    primary = EmbeddedPostgres(base / "primary", ephemeral=True)
    primary.ensure_running()
    replica = EmbeddedReplica(base / "replica", primary=primary)
    replica_dsn = replica.ensure_running()   # pg_basebackup -R on first start

The data directory is made by ``pg_basebackup -R`` (a copy of the primary plus
``standby.signal`` and ``primary_conninfo``) instead of ``initdb``; everything else — the
socket in its own data directory, the server user as root, ``pgfirst.conf`` — works as for
the primary. The copy streams from a physical replication slot named after the data
directory, so the primary keeps the WAL a stopped replica still needs; ``destroy()`` drops
the slot. The primary's ``initdb`` (``--auth=trust``) already lets local replication
connections in, and ``wal_level=replica`` is the default.

``set_apply_delay(seconds)`` sets ``recovery_min_apply_delay``: the replica still receives
the WAL at once but applies each commit only that long after it happened on the primary —
replication lag on demand.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from app.db.embedded import BIN_DIR, EmbeddedPostgres

DELAY_FILE = "pgfirst-replica.conf"


class EmbeddedReplica(EmbeddedPostgres):
    """A hot standby of ``primary`` in its own data directory, on its own socket."""

    def __init__(self, data_dir: Path, *, primary: EmbeddedPostgres) -> None:
        super().__init__(data_dir, ephemeral=primary.ephemeral)
        self.primary = primary
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        self.slot = f"pgfirst_replica_{digest}"

    def set_apply_delay(self, seconds: float) -> None:
        """Apply each commit ``seconds`` after the primary made it (0: as soon as received)."""
        path = self.data_dir / DELAY_FILE
        path.write_text(f"recovery_min_apply_delay = '{int(seconds * 1000)}ms'\n")
        self._give_to_server_user(path)
        with self._locked():
            if self._running():
                self._pg_ctl("reload")

    def destroy(self) -> None:
        super().destroy()
        if self.primary.is_running():
            # The slot would otherwise keep every WAL segment from now on.
            sql = (
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                f"WHERE slot_name = '{self.slot}'"
            )
            with self.primary._locked():
                self.primary._run(
                    [str(BIN_DIR / "psql"), "-X", "-q", "-d", self.primary.dsn(), "-c", sql],
                    check=False,
                )

    def _initdb(self) -> None:
        self.primary.ensure_running()
        self._run(
            [
                str(BIN_DIR / "pg_basebackup"),
                "-D",
                str(self.data_dir),
                "-d",
                self.primary.dsn(),
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--create-slot",
                f"--slot={self.slot}",
                *(["--no-sync"] if self.ephemeral else []),
            ]
        )
        # The copy carries the primary's socket lock (its socket lives in its data
        # directory), server log and settings file; the replica has its own.
        for leftover in self.data_dir.glob(".s.PGSQL.*"):
            leftover.unlink()
        (self.data_dir / "log" / "server.log").unlink(missing_ok=True)
        (self.data_dir / "pgfirst.conf").unlink(missing_ok=True)
        delay = self.data_dir / DELAY_FILE
        delay.write_text("")
        self._give_to_server_user(delay)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"include_if_exists = '{DELAY_FILE}'\n")
