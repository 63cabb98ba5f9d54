"""The ``app`` command: run, migrate and operate pgfirst.

app dev                 embedded Postgres (unless DATABASE_URL), migrate, serve with reload
app serve               production server (no reload; WEB_CONCURRENCY workers)
app worker              run jobs (arrives with the job queue)
app migrate             alembic upgrade head
app db url|stop|psql    the database in use
app signals             the scaling advisor (arrives with the signals module)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.config import PROJECT_ROOT, Settings, SettingsError, get_settings

cli = typer.Typer(
    name="app",
    help="pgfirst: a Postgres-only backend. Every command reads its settings from env vars.",
    no_args_is_help=True,
    add_completion=False,
)
db_cli = typer.Typer(help="The database in use: its URL, and the embedded server.")
cli.add_typer(db_cli, name="db")
activity_cli = typer.Typer(help="The partitioned activity log.")
cli.add_typer(activity_cli, name="activity")
users_cli = typer.Typer(help="User accounts.")
cli.add_typer(users_cli, name="users")
jobs_cli = typer.Typer(help="Background jobs: retry or cancel by id.")
cli.add_typer(jobs_cli, name="jobs")
search_cli = typer.Typer(help="Search: embeddings.")
cli.add_typer(search_cli, name="search")
err = Console(stderr=True)


def main() -> None:
    try:
        cli()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)


def _settings() -> Settings:
    return get_settings()


def _database_url(settings: Settings) -> str:
    from app.db.urls import resolve_database_url

    return resolve_database_url(settings)


@cli.command()
def dev(
    port: Annotated[int, typer.Option(envvar="PORT", help="HTTP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Development: embedded Postgres unless DATABASE_URL, migrate, serve with reload."""
    os.environ.setdefault("LOG_FORMAT", "console")
    settings = _settings()
    dsn = _database_url(settings)
    # The reloader's child processes read their settings anew; hand them the resolved DSN.
    os.environ["DATABASE_URL"] = dsn
    _migrate(dsn)
    if settings.database_url is None:
        err.print("[dim]embedded PostgreSQL keeps running after exit; `app db stop` stops it[/]")
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        reload=True,
        reload_dirs=[str(PROJECT_ROOT / "app")],
        log_config=None,
    )


@cli.command()
def serve() -> None:
    """Production server: HOST, PORT, WEB_CONCURRENCY workers, proxy headers trusted from
    FORWARDED_ALLOW_IPS. Run `app migrate` first (fly.toml's release_command does)."""
    settings = _settings()
    os.environ["DATABASE_URL"] = _database_url(settings)
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=30,
        log_config=None,
    )


@cli.command()
def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default JOBS_CONCURRENCY).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once no job is available.")] = False,
    import_: Annotated[
        list[str] | None, typer.Option("--import", help="Extra modules that define jobs.")
    ] = None,
) -> None:
    """Run background jobs until SIGTERM/SIGINT (graceful: finish, then release)."""
    import asyncio
    import importlib
    import signal

    from app.config import get_settings
    from app.db import Database, set_database
    from app.jobs.worker import Worker
    from app.observability.logging import configure_logging

    settings = _settings()
    configure_logging(settings)
    import app.builtin_jobs  # noqa: F401 - pgfirst's own jobs

    for module in import_ or []:
        importlib.import_module(module)

    async def run() -> None:
        db = await Database.connect(settings, _database_url(settings))
        set_database(db)
        runner = Worker(
            db,
            get_settings(),
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            burst=burst,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runner.stop)
        try:
            await runner.run()
        finally:
            # Jobs may have started the cache (the purge job does, lazily): close its
            # listener and connections before the database they came from.
            from app.cache import cache

            await cache.stop()
            set_database(None)
            await db.close()

    # uvloop, as uvicorn uses for the web process: less CPU per job than the default loop.
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it everywhere but on Windows
        asyncio.run(run())
    else:
        uvloop.run(run())


@cli.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (alembic upgrade) to the database in use."""
    _migrate(_database_url(_settings()), revision)


def _migrate(dsn: str, revision: str = "head") -> None:
    from app.db.migrate import upgrade

    upgrade(dsn, revision)
    err.print(f"[green]migrated to {revision}[/]")


@cli.command()
def signals() -> None:
    """The scaling advisor's table. Placeholder until the signals module lands: it exits
    with status 2 and says so."""
    err.print("[yellow]app signals: the signals advisor is not part of this build yet[/]")
    raise typer.Exit(2)


@db_cli.command("url")
def db_url() -> None:
    """Print the DSN in use (starts the embedded server if needed and leaves it running)."""
    typer.echo(_database_url(_settings()))


@db_cli.command("stop")
def db_stop() -> None:
    """Stop the embedded server (no-op with DATABASE_URL)."""
    from app.db.urls import embedded_server

    stopped = embedded_server(_settings()).stop()
    err.print("stopped" if stopped else "embedded server was not running")


@db_cli.command("backup")
def db_backup(
    path: Annotated[
        Path | None, typer.Argument(help="Output file (default: backups/<db>-<utc time>.dump).")
    ] = None,
) -> None:
    """Dump the database in use with pg_dump (custom format, compressed)."""
    from app.db.backup import backup

    written = backup(_database_url(_settings()), path)
    err.print(f"[green]backup written to {written}[/]")


@db_cli.command("restore")
def db_restore(
    path: Annotated[Path, typer.Argument(help="A dump made by `app db backup`.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before overwriting.")] = False,
) -> None:
    """Restore a dump into the database in use, replacing the objects it contains."""
    from app.db.backup import restore

    dsn = _database_url(_settings())
    if not yes:
        typer.confirm(f"Replace the contents of the database in use with {path}?", abort=True)
    restore(dsn, path)
    err.print(f"[green]restored {path}[/]")


@db_cli.command("psql")
def db_psql() -> None:
    """Open psql (bundled with the embedded server) on the database in use."""
    from app.db.embedded import bin_path

    dsn = _database_url(_settings())
    psql = str(bin_path("psql"))
    os.execv(psql, [psql, dsn])  # noqa: S606 - replaces this process with psql


@jobs_cli.command("retry")
def jobs_retry(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Make a dead or cancelled job available again."""
    _job_action("retry", job_id)


@jobs_cli.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Cancel a waiting job, or stop a running one."""
    _job_action("cancel", job_id)


def _job_action(action: str, job_id: int) -> None:
    import asyncio

    from app.db import Database, set_database
    from app.jobs import cancel_job, retry_job

    settings = _settings()

    async def run() -> bool:
        db = await Database.connect(settings, _database_url(settings))
        set_database(db)
        try:
            return await (retry_job if action == "retry" else cancel_job)(job_id)
        finally:
            set_database(None)
            await db.close()

    if not asyncio.run(run()):
        err.print(f"[red]job {job_id} cannot be {action}{'ed' if action == 'cancel' else 'd'}[/]")
        raise typer.Exit(1)
    err.print(f"[green]job {job_id}: {action} done[/]")


@users_cli.command("create-admin")
def users_create_admin(
    email: Annotated[str, typer.Argument(help="The admin's email address.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="ADMIN_PASSWORD",
            help="Prompted for (hidden) unless ADMIN_PASSWORD is set.",
        ),
    ],
) -> None:
    """Create an admin account, or make an existing account an admin (password unchanged)."""
    import asyncio

    from app.auth.passwords import Passwords, policy_problem
    from app.auth.schemas import normalise_email
    from app.db import Database

    try:
        address = normalise_email(email)
    except ValueError:
        err.print("[red]not an email address[/]")
        raise typer.Exit(2) from None
    problem = policy_problem(password)
    if problem:
        err.print(f"[red]{problem}[/]")
        raise typer.Exit(2)
    settings = _settings()

    async def run() -> bool:
        from app.cache import cache

        password_hash = await Passwords(settings).hash(password)
        db = await Database.connect(settings, _database_url(settings))
        try:
            async with db.transaction() as conn:
                row = await conn.fetchrow(
                    """
                    INSERT INTO users (email, password_hash, is_admin, email_verified_at)
                    VALUES ($1, $2, true, now())
                    ON CONFLICT (email) DO UPDATE SET is_admin = true
                    RETURNING id, (xmax = 0) AS created
                    """,
                    address,
                    password_hash,
                )
            assert row is not None
            # Sessions cached as non-admin would otherwise linger for CACHE_AUTH_TTL_SECONDS.
            await cache.start(settings, db)
            try:
                await cache.delete_prefix(f"auth:{row['id']}:")
            finally:
                await cache.stop()
        finally:
            await db.close()
        return bool(row["created"])

    created = asyncio.run(run())
    err.print(f"[green]{'created admin' if created else 'made admin'} {address}[/]")


@search_cli.command("reindex")
def search_reindex(
    everything: Annotated[
        bool, typer.Option("--all", help="Re-embed every task, not only stale ones.")
    ] = False,
) -> None:
    """Compute missing or stale task embeddings now, with a progress bar."""
    import asyncio

    from rich.progress import Progress

    from app.db import Database, set_database
    from app.search import reindex_batches

    settings = _settings()

    async def run() -> int:
        db = await Database.connect(settings, _database_url(settings))
        set_database(db)
        try:
            async with db.acquire() as conn:
                total = await conn.fetchval(
                    "SELECT count(*) FROM tasks"
                    + (
                        ""
                        if everything
                        else " WHERE embedded_at IS NULL OR embedded_at < updated_at"
                    )
                )
            done = 0
            with Progress(console=err) as progress:
                bar = progress.add_task("embedding tasks", total=total)
                async for count in reindex_batches(everything=everything):
                    done += count
                    progress.update(bar, advance=count)
            return done
        finally:
            set_database(None)
            await db.close()

    err.print(f"[green]embedded {asyncio.run(run())} tasks[/]")


@activity_cli.command("maintain")
def activity_maintain() -> None:
    """Create partitions ahead, drain the DEFAULT partition, retire expired partitions."""
    import asyncio

    from app.activity.partitions import maintain
    from app.db import Database

    settings = _settings()

    async def run() -> None:
        db = await Database.connect(settings, _database_url(settings))
        try:
            report = await maintain(
                db,
                interval=settings.activity_partition_interval,
                premake=settings.activity_premake_periods,
                retention=settings.activity_retention_periods,
            )
        finally:
            await db.close()
        if not report.ran:
            err.print("another instance is maintaining the activity log; nothing done")
            return
        err.print(
            f"created {report.created or 'none'}, retired {report.retired or 'none'}, "
            f"moved {report.moved_rows} and deleted {report.deleted_rows} rows from DEFAULT, "
            f"{report.default_rows_left} left there"
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
