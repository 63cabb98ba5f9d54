"""The no-op job bench_scale drains (imported by its workers through ``job_modules``)."""

from __future__ import annotations

from app.jobs import job


@job(name="bench.noop")
async def noop() -> None:
    return None
