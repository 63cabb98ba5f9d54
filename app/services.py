"""Services: every shared resource of a process, built and torn down in one place.

    from app.services import open_services

    async with open_services() as services:        # settings from the environment
        async with services.db.transaction() as conn:
            ...
        await services.jobs.enqueue("myapp.send_report", {"day": "2026-12-01"})

The app lifespan, ``app worker``, every CLI command, scripts and tests open services this
way; routes receive what they need through the typed dependencies of ``app.deps``. Nothing
opens itself on first use: the module-level ``enqueue``, ``publish`` and ``cache`` of the
public contract use the innermost open services and raise ``ServicesNotOpen`` outside them.

Start order, stopped in reverse: database pools → notifiers (Postgres, and Redis when a
Redis backend is on) → cache → broker → rate limiter, mailer, auth → job registry. Where
this sits in the layers: above the domain (it gathers the domain's job lists), below the
web routes and the entry points that use it (docs/foundation.md, "How the pieces fit").
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from app.activity.jobs import activity_jobs
from app.auth.jobs import auth_jobs, token_jobs
from app.auth.mail import Mailer, create_mailer
from app.auth.passwords import Passwords
from app.auth.ratelimit import RateLimiter, create_rate_limiter
from app.auth.service import Auth
from app.cache import Cache, create_backend, current_cache
from app.cache.jobs import cache_jobs
from app.cache.metrics import CacheCollector
from app.config import Settings, load_settings
from app.current import Current
from app.db import Database
from app.db.redis_pool import open_redis
from app.jobs import JobKind, JobRegistry, Jobs, current_jobs, jobs_in
from app.jobs.housekeeping import queue_jobs
from app.notifier import Notifier, create_postgres_notifier, create_redis_notifier
from app.observability.metrics import PoolCollector, register_collector
from app.pubsub import Broker, create_broker, current_broker
from app.pubsub.jobs import pubsub_jobs
from app.search import embedder
from app.search.embedder import Embedder
from app.search.jobs import search_jobs
from app.signals.jobs import signal_jobs
from app.stats.service import stats_jobs

__all__ = ["Services", "current_services", "open_services"]

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[str, bool]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    settings: Settings
    db: Database
    notifier: Notifier  # Postgres LISTEN: jobs, and the Postgres cache and broker
    redis: Redis | None  # one client for every Redis backend
    redis_notifier: Notifier | None  # one subscriber for the Redis cache and broker
    cache: Cache
    broker: Broker
    rate_limiter: RateLimiter
    mailer: Mailer
    passwords: Passwords
    auth: Auth
    jobs: Jobs
    embedder: Embedder

    def health_checks(self) -> dict[str, HealthCheck]:
        """Components that report their own state to /readyz: (state, healthy)."""
        # A cache that cannot reach its backend serves misses: reported, never unready.
        return {
            "notifier": self.notifier.health,
            "pubsub": self.broker.health,
            "cache": self.cache.health,
        }


current_services: Current[Services] = Current("services")


@asynccontextmanager
async def open_services(
    settings: Settings | None = None,
    *,
    dsn: str | None = None,
    job_modules: Iterable[str] = (),
    extra_jobs: Iterable[JobKind] = (),
) -> AsyncIterator[Services]:
    """Open every shared resource; close them all (in reverse) when the block ends.

    ``settings`` default to the environment; ``dsn`` to DATABASE_URL (or the embedded
    server). The job registry holds pgfirst's own jobs, the ``@job`` functions of
    JOBS_MODULES and of ``job_modules``, and ``extra_jobs``.
    """
    settings = settings or load_settings()
    async with AsyncExitStack() as stack:
        db = await Database.connect(settings, dsn)
        stack.push_async_callback(db.close)
        # Metrics describe the process's outermost services (more open at once only in
        # tests and tools, which would otherwise register the same series twice).
        outermost = not current_services.is_set
        if outermost:
            stack.callback(
                register_collector(
                    PoolCollector(
                        lambda: [(s.role, s.size, s.in_use, s.max_size) for s in db.stats()]
                    )
                )
            )

        direct = db.connect_direct if db.direct_url is not None else None
        notifier = create_postgres_notifier(direct)
        await notifier.start()
        stack.push_async_callback(notifier.stop)

        redis: Redis | None = None
        redis_notifier: Notifier | None = None
        if settings.redis_url and _uses_redis(settings):
            redis = open_redis(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_pool_timeout_seconds,
            )
            stack.push_async_callback(redis.aclose)
            redis_notifier = create_redis_notifier(settings.redis_url)
            await redis_notifier.start()
            stack.push_async_callback(redis_notifier.stop)

        def notifier_for(backend: str) -> Notifier:
            return redis_notifier if backend == "redis" and redis_notifier else notifier

        cache = Cache(
            settings, create_backend(settings, db, redis), notifier_for(settings.cache_backend)
        )
        await cache.start()
        stack.push_async_callback(cache.stop)
        if outermost:
            stack.callback(register_collector(CacheCollector(cache)))

        broker = create_broker(settings, db, notifier_for(settings.pubsub_backend), redis)
        await broker.start()
        stack.push_async_callback(broker.stop)

        limiter = create_rate_limiter(settings, db, redis)
        stack.push_async_callback(limiter.close)
        mailer = create_mailer(settings)
        registry = JobRegistry()
        jobs = Jobs(db, settings, registry, notifier)
        passwords = Passwords(settings)
        services = Services(
            settings=settings,
            db=db,
            notifier=notifier,
            redis=redis,
            redis_notifier=redis_notifier,
            cache=cache,
            broker=broker,
            rate_limiter=limiter,
            mailer=mailer,
            passwords=passwords,
            auth=Auth(settings, db, passwords, cache, jobs),
            jobs=jobs,
            embedder=embedder(settings),
        )
        registry.add(builtin_jobs(services))
        registry.add(await _user_jobs([*settings.jobs_modules, *job_modules]))
        registry.add(extra_jobs)

        stack.callback(current_services.push(services))
        stack.callback(current_cache.push(cache))
        stack.callback(current_broker.push(broker))
        stack.callback(current_jobs.push(jobs))
        yield services


def builtin_jobs(services: Services) -> list[JobKind]:
    """pgfirst's own jobs, each from the package that owns it."""
    settings, db = services.settings, services.db
    return [
        *queue_jobs(db, settings),
        *cache_jobs(services.cache),
        *pubsub_jobs(services.broker, settings),
        *activity_jobs(db, settings),
        *auth_jobs(services.rate_limiter, services.mailer, settings),
        *token_jobs(services.auth),
        *search_jobs(db, services.embedder),
        *stats_jobs(db, settings),
        *signal_jobs(db, settings),
    ]


async def _user_jobs(module_names: Iterable[str]) -> list[JobKind]:
    kinds: list[JobKind] = []
    for name in dict.fromkeys(module_names):
        # Importing runs module code: off the event loop, as any other blocking work.
        module = await asyncio.to_thread(importlib.import_module, name)
        found = jobs_in(module)
        if not found:
            log.warning("jobs: module %s defines no @job functions", name)
        kinds.extend(found)
    return kinds


def _uses_redis(settings: Settings) -> bool:
    backends = (settings.cache_backend, settings.pubsub_backend, settings.rate_limit_backend)
    return "redis" in backends
