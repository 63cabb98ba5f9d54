"""Auth's jobs: sending email (``mail.py``), pruning rate-limit counters and spent tokens
(hourly each; ``pruning.py``)."""

from __future__ import annotations

from app.auth.mail import Mailer, mail_jobs
from app.auth.ratelimit import RateLimiter
from app.auth.service import Auth
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


def token_jobs(auth: Auth) -> list[JobKind]:
    async def prune_tokens() -> int:
        return await auth.prune_tokens()

    return [JobKind("pgfirst.prune_tokens", prune_tokens, cron=Cron.parse("47 * * * *"))]
