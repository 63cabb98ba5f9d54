"""Auth's jobs: sending email (``mail.py``) and pruning rate-limit counters (hourly)."""

from __future__ import annotations

from app.auth.mail import Mailer, mail_jobs
from app.auth.ratelimit import RateLimiter
from app.config import Settings
from app.jobs import JobKind
from app.jobs.cron import Cron


def auth_jobs(limiter: RateLimiter, mailer: Mailer, settings: Settings) -> list[JobKind]:
    async def prune_rate_limits() -> int:
        window = settings.rate_limit_window_seconds
        return await limiter.prune(older_than=max(3600, 2 * window))

    return [
        *mail_jobs(mailer),
        JobKind("pgfirst.prune_rate_limits", prune_rate_limits, cron=Cron.parse("37 * * * *")),
    ]
