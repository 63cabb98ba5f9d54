"""``app worker``: run jobs in this process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from app.cli.common import run_with_services, settings
from app.observability.logging import configure_logging
from app.services import Services


def register(cli: typer.Typer) -> None:
    cli.command()(worker)


def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default JOBS_CONCURRENCY).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once no job is available.")] = False,
    import_: Annotated[
        list[str] | None,
        typer.Option("--import", help="Extra modules that define jobs (besides JOBS_MODULES)."),
    ] = None,
) -> None:
    """Run background jobs until SIGTERM/SIGINT (graceful: finish, then release)."""
    from app.jobs.worker import Worker
    from app.runtime import freeze_startup_heap

    current = settings()
    configure_logging(current)
    wanted = [q.strip() for q in queues.split(",") if q.strip()] if queues else None

    async def run(services: Services) -> None:
        runner = Worker(services.jobs, queues=wanted, concurrency=concurrency, burst=burst)
        if current.gc_freeze_after_startup:
            freeze_startup_heap()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runner.stop)
        await runner.run()

    run_with_services(run, current, job_modules=import_ or [])
