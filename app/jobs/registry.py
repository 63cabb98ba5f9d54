"""``@job``: register an async function as a job kind, optionally periodic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.jobs.cron import Cron

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Handler
    queue: str
    max_attempts: int | None
    timeout: float | None
    cron: Cron | None


REGISTRY: dict[str, JobKind] = {}


def job(
    name: str | None = None,
    *,
    queue: str = "default",
    max_attempts: int | None = None,
    timeout: float | None = None,
    cron: str | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``async def handler(**args)`` as a job kind.

    ``name`` defaults to ``module.function``; ``max_attempts``/``timeout`` default to
    JOBS_DEFAULT_MAX_ATTEMPTS/JOBS_DEFAULT_TIMEOUT; ``cron`` ("*/5 * * * *", UTC) makes it
    periodic: every worker process schedules it, and each slot runs exactly once.
    """

    def register(handler: Handler) -> Handler:
        kind_name = name or f"{handler.__module__}.{handler.__qualname__}"
        REGISTRY[kind_name] = JobKind(
            kind_name, handler, queue, max_attempts, timeout, Cron.parse(cron) if cron else None
        )
        return handler

    return register
