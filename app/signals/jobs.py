"""The advisor's periodic jobs: ``pgfirst.sample_signals`` every minute stores a sample;
``pgfirst.prune_signals`` hourly drops samples past SIGNAL_RETENTION_HOURS and reports of
processes long gone. Each cron slot runs once across every worker."""

from __future__ import annotations

from app.config import Settings
from app.db import Database
from app.jobs.cron import Cron
from app.jobs.registry import JobKind
from app.signals import history
from app.signals.advisor import measure
from app.signals.process import prune_reports


def signal_jobs(db: Database, settings: Settings) -> list[JobKind]:
    async def sample() -> int:
        report = await measure(db, settings, record=True)
        return sum(1 for item in report.signals if item.fired)

    async def prune() -> int:
        async with db.acquire() as conn:
            deleted = await history.prune(conn, settings.signal_retention_hours * 3600)
        return deleted + await prune_reports(db, settings)

    return [
        JobKind("pgfirst.sample_signals", sample, cron=Cron.parse("* * * * *"), timeout=50),
        JobKind("pgfirst.prune_signals", prune, cron=Cron.parse("17 * * * *")),
    ]
