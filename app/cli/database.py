"""``app db``: the database in use — its URL, the embedded server, backups, psql."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from app.cli.common import database_url, err, settings

db_cli = typer.Typer(help="The database in use: its URL, and the embedded server.")


def register(cli: typer.Typer) -> None:
    cli.add_typer(db_cli, name="db")


@db_cli.command("url")
def db_url() -> None:
    """Print the DSN in use (starts the embedded server if needed and leaves it running)."""
    typer.echo(database_url(settings()))


@db_cli.command("stop")
def db_stop() -> None:
    """Stop the embedded server (no-op with DATABASE_URL)."""
    from app.db.urls import embedded_server

    stopped = embedded_server(settings()).stop()
    err.print("stopped" if stopped else "embedded server was not running")


@db_cli.command("backup")
def db_backup(
    path: Annotated[
        Path | None, typer.Argument(help="Output file (default: backups/<db>-<utc time>.dump).")
    ] = None,
) -> None:
    """Dump the database in use with pg_dump (custom format, compressed)."""
    from app.db.backup import BackupError, backup

    try:
        written = backup(_direct_url(), path)
    except BackupError as exc:
        _fail(exc)
    err.print(f"[green]backup written to {written}[/]")


@db_cli.command("restore")
def db_restore(
    path: Annotated[Path, typer.Argument(help="A dump made by `app db backup`.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before overwriting.")] = False,
) -> None:
    """Make schema public of the database in use what the dump holds, in one transaction.

    Without --yes it asks first; with no terminal to ask on, it refuses."""
    from app.db.backup import BackupError, restore

    if not path.is_file():
        _fail(f"no such dump: {path}")
    if not yes:
        if not sys.stdin.isatty():
            _fail("restore replaces every table of the database in use; pass --yes")
        typer.confirm(f"Replace every table of the database in use with {path}?", abort=True)
    try:
        restore(_direct_url(), path)
    except BackupError as exc:
        _fail(exc)
    err.print(f"[green]restored {path}[/]")


def _direct_url() -> str:
    # pg_dump and psql SET session parameters outside their transactions, which a
    # transaction-mode PgBouncer would leave on another client's server connection.
    current = settings()
    return current.database_direct_url or database_url(current)


def _fail(reason: object) -> NoReturn:
    # One line on stderr and a non-zero exit; markup off, the reason may hold brackets.
    err.print(f"error: {reason}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@db_cli.command("psql")
def db_psql() -> None:
    """Open psql (bundled with the embedded server) on the database in use."""
    from app.db.embedded import bin_path

    dsn = database_url(settings())
    psql = str(bin_path("psql"))
    os.execv(psql, [psql, dsn])  # noqa: S606 - replaces this process with psql


@db_cli.command("check-pooler")
def db_check_pooler(
    pooler_url: Annotated[
        str | None,
        typer.Option(
            help="The PgBouncer URL about to become DATABASE_URL (default: "
            "DATABASE_URL when DB_POOL_MODE=pgbouncer)."
        ),
    ] = None,
    instances: Annotated[
        int, typer.Option(min=1, help="Processes that will connect (web + workers).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """What would break behind PgBouncer in transaction mode; exit 1 if anything would."""
    import asyncio
    import json

    from app.db.pooler_check import PoolerTarget, as_dicts, check_pooler, failed

    current = settings()
    if not current.database_url:
        current = current.model_copy(update={"database_url": database_url(current)})
    target = PoolerTarget.from_settings(current, pooler_url=pooler_url, instances=instances)
    findings = asyncio.run(check_pooler(target))
    if as_json:
        typer.echo(json.dumps(as_dicts(findings), indent=2))
    else:
        colours = {"ok": "green", "info": "blue", "warn": "yellow", "error": "red"}
        for finding in findings:
            colour = colours.get(finding.status, "white")
            err.print(f"[{colour}]{finding.status:>7}[/]  {finding.check}: {finding.detail}")
    raise typer.Exit(1 if failed(findings) else 0)
