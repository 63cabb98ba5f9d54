"""The activity log's job: make partitions ahead, drain DEFAULT, retire old ones (hourly)."""

from __future__ import annotations

from app.activity.partitions import maintain
from app.config import Settings
from app.db import Database
from app.jobs import JobKind
from app.jobs.cron import Cron


def activity_jobs(db: Database, settings: Settings) -> list[JobKind]:
    async def maintain_partitions() -> None:
        await maintain(
            db,
            interval=settings.activity_partition_interval,
            premake=settings.activity_premake_periods,
            retention=settings.activity_retention_periods,
        )

    return [
        JobKind(
            "pgfirst.maintain_activity_partitions",
            maintain_partitions,
            timeout=600,
            cron=Cron.parse("7 * * * *"),
        )
    ]
