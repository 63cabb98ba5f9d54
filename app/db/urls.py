"""Which PostgreSQL the process talks to: DATABASE_URL, or the embedded server."""

from __future__ import annotations

from app.config import Settings
from app.db.embedded import EmbeddedPostgres


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.embedded_pg_dir)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise start (or reuse) the embedded server.

    Blocking: call it before the event loop starts or through ``asyncio.to_thread``.
    """
    if settings.database_url:
        return settings.database_url
    if settings.env == "production":  # also refused by Settings; kept as a last guard
        raise RuntimeError("ENV=production needs DATABASE_URL")
    return embedded_server(settings).ensure_running()
