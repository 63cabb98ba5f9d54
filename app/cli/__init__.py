"""The ``app`` command: run, migrate and operate pgfirst.

app dev                 embedded Postgres (unless DATABASE_URL), migrate, serve with reload
app serve               production server (no reload; WEB_CONCURRENCY workers)
app worker              run jobs (own process; JOBS_INLINE_WORKER=false in the web one)
app migrate             alembic upgrade head
app db url|stop|psql|backup|restore    the database in use
app jobs retry|cancel ID, app users create-admin EMAIL, app search reindex,
app activity maintain   operations, each a call to the service that owns it
app signals [--json] [--since 1h] [--link]   the scaling advisor (docs/signals.md)

Every command that touches the database opens the services (``common.run_with_services``)
and calls the function of the package that owns the work; no SQL lives here.
"""

from __future__ import annotations

import sys

import typer

from app.cli import database, operations, server, signals, worker
from app.cli.common import err
from app.config import SettingsError

cli = typer.Typer(
    name="app",
    help="pgfirst: a Postgres-only backend. Every command reads its settings from env vars.",
    no_args_is_help=True,
    add_completion=False,
)
server.register(cli)
worker.register(cli)
database.register(cli)
operations.register(cli)
signals.register(cli)


def main() -> None:
    try:
        cli()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)  # one line per line, unwrapped
        sys.exit(2)
