"""Pub/sub's job: ``pgfirst.prune_events`` drops events past PUBSUB_RETENTION_SECONDS."""

from __future__ import annotations

from app.config import Settings
from app.jobs import JobKind
from app.jobs.cron import Cron
from app.pubsub import Broker


def pubsub_jobs(broker: Broker, settings: Settings) -> list[JobKind]:
    async def prune_events() -> int:
        return await broker.prune(settings.pubsub_retention_seconds)

    return [JobKind("pgfirst.prune_events", prune_events, cron=Cron.parse("23 * * * *"))]
