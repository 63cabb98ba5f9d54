"""What every command shares: the settings, the database URL, and running with services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from rich.console import Console

from app.config import Settings, load_settings
from app.services import Services, open_services

T = TypeVar("T")

err = Console(stderr=True)


def settings() -> Settings:
    """Settings from the environment (SettingsError → exit 2 with the reason, in main)."""
    return load_settings()


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server (started if needed, left running)."""
    from app.db.urls import resolve_database_url

    return resolve_database_url(settings)


def run_with_services(
    work: Callable[[Services], Awaitable[T]],
    settings: Settings,
    *,
    job_modules: Iterable[str] = (),
) -> T:
    """Open the services, run ``work`` on them, close them; on uvloop, as the server runs."""
    dsn = database_url(settings)

    async def run() -> T:
        async with open_services(settings, dsn=dsn, job_modules=job_modules) as services:
            return await work(services)

    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it everywhere but on Windows
        return asyncio.run(run())
    return uvloop.run(run())
