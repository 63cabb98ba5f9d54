"""Operations on a running system: jobs, users, search, the activity log.

Each command opens the services and calls the function of the package that owns the work.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import err, run_with_services, settings
from app.services import Services

jobs_cli = typer.Typer(help="Background jobs: retry or cancel by id.")
users_cli = typer.Typer(help="User accounts.")
search_cli = typer.Typer(help="Search: embeddings.")
activity_cli = typer.Typer(help="The partitioned activity log.")


def register(cli: typer.Typer) -> None:
    cli.add_typer(jobs_cli, name="jobs")
    cli.add_typer(users_cli, name="users")
    cli.add_typer(search_cli, name="search")
    cli.add_typer(activity_cli, name="activity")


@jobs_cli.command("retry")
def jobs_retry(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Make a dead or cancelled job available again."""

    async def retry(services: Services) -> bool:
        return await services.jobs.retry(job_id)

    if not run_with_services(retry, settings()):
        err.print(f"[red]job {job_id} cannot be retried: only dead or cancelled jobs can[/]")
        raise typer.Exit(1)
    err.print(f"[green]job {job_id}: retry done[/]")


@jobs_cli.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Cancel a waiting job, or stop a running one."""

    async def cancel(services: Services) -> bool:
        return await services.jobs.cancel(job_id)

    if not run_with_services(cancel, settings()):
        err.print(f"[red]job {job_id} cannot be cancelled: only waiting or running jobs can[/]")
        raise typer.Exit(1)
    err.print(f"[green]job {job_id}: cancel done[/]")


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
    from app.auth.passwords import policy_problem
    from app.auth.schemas import normalise_email

    try:
        address = normalise_email(email)
    except ValueError:
        err.print("[red]not an email address[/]")
        raise typer.Exit(2) from None
    problem = policy_problem(password)
    if problem:
        err.print(f"[red]{problem}[/]")
        raise typer.Exit(2)

    async def create(services: Services) -> bool:
        return await services.auth.create_admin(address, password)

    created = run_with_services(create, settings())
    err.print(f"[green]{'created admin' if created else 'made admin'} {address}[/]")


@search_cli.command("reindex")
def search_reindex(
    everything: Annotated[
        bool, typer.Option("--all", help="Re-embed every task, not only stale ones.")
    ] = False,
) -> None:
    """Compute missing or stale task embeddings now, with a progress bar."""
    from rich.progress import Progress

    from app.search import count_to_embed, reindex_batches

    async def reindex(services: Services) -> int:
        total = await count_to_embed(services.db, everything=everything)
        done = 0
        with Progress(console=err) as progress:
            bar = progress.add_task("embedding tasks", total=total)
            batches = reindex_batches(services.db, services.embedder, everything=everything)
            async for count in batches:
                done += count
                progress.update(bar, advance=count)
        return done

    err.print(f"[green]embedded {run_with_services(reindex, settings())} tasks[/]")


@activity_cli.command("maintain")
def activity_maintain() -> None:
    """Create partitions ahead, drain the DEFAULT partition, retire expired partitions."""
    from app.activity.partitions import MaintenanceReport, maintain

    async def run(services: Services) -> MaintenanceReport:
        current = services.settings
        return await maintain(
            services.db,
            interval=current.activity_partition_interval,
            premake=current.activity_premake_periods,
            retention=current.activity_retention_periods,
        )

    report = run_with_services(run, settings())
    if not report.ran:
        err.print("another instance is maintaining the activity log; nothing done")
        return
    err.print(
        f"created {report.created or 'none'}, retired {report.retired or 'none'}, "
        f"moved {report.moved_rows} and deleted {report.deleted_rows} rows from DEFAULT, "
        f"{report.default_rows_left} left there"
    )
