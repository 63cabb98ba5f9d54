"""``app db``: the database in use — its URL, the embedded server, backups, psql."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

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
    from app.db.backup import backup

    written = backup(database_url(settings()), path)
    err.print(f"[green]backup written to {written}[/]")


@db_cli.command("restore")
def db_restore(
    path: Annotated[Path, typer.Argument(help="A dump made by `app db backup`.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before overwriting.")] = False,
) -> None:
    """Restore a dump into the database in use, replacing the objects it contains."""
    from app.db.backup import restore

    dsn = database_url(settings())
    if not yes:
        typer.confirm(f"Replace the contents of the database in use with {path}?", abort=True)
    restore(dsn, path)
    err.print(f"[green]restored {path}[/]")


@db_cli.command("psql")
def db_psql() -> None:
    """Open psql (bundled with the embedded server) on the database in use."""
    from app.db.embedded import bin_path

    dsn = database_url(settings())
    psql = str(bin_path("psql"))
    os.execv(psql, [psql, dsn])  # noqa: S606 - replaces this process with psql
