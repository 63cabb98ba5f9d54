"""``app dev``, ``app serve``, ``app migrate``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from app.cli.common import database_url, err, settings
from app.config import PROJECT_ROOT


def register(cli: typer.Typer) -> None:
    cli.command()(dev)
    cli.command()(serve)
    cli.command()(migrate)


def dev(
    port: Annotated[int, typer.Option(envvar="PORT", help="HTTP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Development: embedded Postgres unless DATABASE_URL, migrate, serve with reload."""
    os.environ.setdefault("LOG_FORMAT", "console")
    current = settings()
    dsn = database_url(current)
    # The reloader's child processes read their settings anew; hand them the resolved DSN.
    os.environ["DATABASE_URL"] = dsn
    _migrate(dsn)
    if current.database_url is None:
        err.print("[dim]embedded PostgreSQL keeps running after exit; `app db stop` stops it[/]")
    import uvicorn

    from app.observability.http_limits import LimitedHttpToolsProtocol

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        http=LimitedHttpToolsProtocol,  # limits from each process's settings
        host=host,
        port=port,
        reload=True,
        reload_dirs=[str(PROJECT_ROOT / "app")],
        log_config=None,
    )


def serve() -> None:
    """Production server: HOST, PORT, WEB_CONCURRENCY workers, proxy headers trusted from
    FORWARDED_ALLOW_IPS. Run `app migrate` first (fly.toml's release_command does)."""
    current = settings()
    os.environ["DATABASE_URL"] = database_url(current)
    import uvicorn

    from app.observability.http_limits import LimitedHttpToolsProtocol

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        http=LimitedHttpToolsProtocol,  # limits from each process's settings
        host=current.host,
        port=current.port,
        workers=current.web_concurrency,
        proxy_headers=True,
        forwarded_allow_ips=current.forwarded_allow_ips,
        timeout_graceful_shutdown=30,
        log_config=None,
    )


def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (alembic upgrade) to the database in use — on DATABASE_DIRECT_URL
    when set: DDL and its session settings belong on the server itself, not a pooler."""
    current = settings()
    _migrate(current.database_direct_url or database_url(current), revision)


def _migrate(dsn: str, revision: str = "head") -> None:
    from app.db.migrate import upgrade

    upgrade(dsn, revision)
    err.print(f"[green]migrated to {revision}[/]")
