"""Job kinds: ``@job`` marks an async function as one; a ``JobRegistry`` is what a process runs.

Nothing registers itself on import. ``@job`` only attaches a ``JobKind`` to the function;
the registry of a process is built explicitly by ``app.services.open_services`` from
pgfirst's own job lists (each package exposes one) and the modules named in JOBS_MODULES
(``app worker --import`` adds more), so a worker runs exactly the jobs it was given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from app.jobs.cron import Cron

Handler = Callable[..., Awaitable[Any]]
KIND_ATTRIBUTE = "__pgfirst_job__"


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Handler
    queue: str = "default"
    max_attempts: int | None = None
    timeout: float | None = None
    cron: Cron | None = None


def job(
    name: str | None = None,
    *,
    queue: str = "default",
    max_attempts: int | None = None,
    timeout: float | None = None,
    cron: str | None = None,
) -> Callable[[Handler], Handler]:
    """Mark ``async def handler(**args)`` as a job kind.

    ``name`` defaults to ``module.function``; ``max_attempts``/``timeout`` default to
    JOBS_DEFAULT_MAX_ATTEMPTS/JOBS_DEFAULT_TIMEOUT; ``cron`` ("*/5 * * * *", UTC) makes it
    periodic: each slot runs exactly once across every worker. A worker runs it once its
    module is named in JOBS_MODULES (or ``app worker --import``).
    """

    def mark(handler: Handler) -> Handler:
        kind_name = name or f"{handler.__module__}.{handler.__qualname__}"
        kind = JobKind(
            kind_name, handler, queue, max_attempts, timeout, Cron.parse(cron) if cron else None
        )
        setattr(handler, KIND_ATTRIBUTE, kind)
        return handler

    return mark


def kind_of(handler: object) -> JobKind | None:
    kind = getattr(handler, KIND_ATTRIBUTE, None)
    return kind if isinstance(kind, JobKind) else None


def jobs_in(module: ModuleType) -> list[JobKind]:
    """Every ``@job`` function defined at the top level of ``module``."""
    return [kind for value in vars(module).values() if (kind := kind_of(value)) is not None]


class DuplicateJob(ValueError):
    """Two job kinds share a name."""


class JobRegistry:
    """The job kinds one process knows, by name."""

    def __init__(self, kinds: Iterable[JobKind] = ()) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.add(kinds)

    def add(self, kinds: Iterable[JobKind]) -> None:
        for kind in kinds:
            existing = self._kinds.get(kind.name)
            if existing is not None and existing.handler is not kind.handler:
                raise DuplicateJob(f"two jobs are named {kind.name!r}")
            self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind | None:
        return self._kinds.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[JobKind]:
        return iter(list(self._kinds.values()))

    def __len__(self) -> int:
        return len(self._kinds)

    def queues(self) -> list[str]:
        return sorted({kind.queue for kind in self._kinds.values()} | {"default"})
