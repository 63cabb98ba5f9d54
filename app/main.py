"""create_app(): wiring only.

The lifespan starts things in one readable order and stops them in reverse:
pools → pub/sub listener → cache (backend, L1 listener) → auth (hasher, rate limiter)
→ job worker
(only with JOBS_INLINE_WORKER; production runs `app worker` separately).
Nothing here does I/O at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from app import builtin_jobs, pubsub
from app.activity.router import router as activity_router
from app.auth.passwords import Passwords
from app.auth.ratelimit import create_rate_limiter
from app.auth.router import router as auth_router
from app.auth.service import Auth
from app.cache import cache
from app.cache.metrics import CacheCollector
from app.cache.views import router as stats_router
from app.config import Settings, get_settings, set_settings
from app.db import Database, set_database
from app.jobs.router import router as jobs_router
from app.jobs.worker import Worker
from app.observability import health
from app.observability.errors import install_error_handlers
from app.observability.logging import configure_logging
from app.observability.metrics import PoolCollector, register_collector
from app.observability.middleware import RequestMiddleware
from app.pubsub.router import router as events_router
from app.search.router import router as search_router
from app.tasks.router import router as tasks_router

_ = builtin_jobs  # registers pgfirst's own jobs (housekeeping, email, embeddings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            set_settings(settings)
            stack.callback(set_settings, None)
            db = await Database.connect(settings)
            stack.push_async_callback(db.close)
            app.state.db = db
            set_database(db)
            stack.callback(set_database, None)
            stack.callback(
                register_collector(
                    PoolCollector(
                        lambda: [(s.role, s.size, s.in_use, s.max_size) for s in db.stats()]
                    )
                )
            )

            broker = pubsub.create_broker(settings, db)
            await broker.start()
            stack.push_async_callback(broker.stop)
            app.state.broker = broker
            pubsub.set_broker(broker)
            stack.callback(pubsub.set_broker, None)
            app.state.health_checks["pubsub"] = broker.health

            await cache.start(settings, db)
            stack.push_async_callback(cache.stop)
            stack.callback(register_collector(CacheCollector(cache)))
            app.state.cache = cache
            app.state.health_checks["cache"] = cache.health

            app.state.auth = Auth(settings, db, Passwords(settings))
            limiter = create_rate_limiter(settings, db)
            stack.push_async_callback(limiter.close)
            app.state.rate_limiter = limiter

            if settings.run_inline_worker:
                worker = Worker(db, settings)
                worker_task = asyncio.create_task(worker.run(), name="inline-worker")
                stack.push_async_callback(_stop_worker, worker, worker_task)

            yield

    app = FastAPI(
        title="pgfirst",
        summary="A Postgres-only reference backend.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.health_checks = {}
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_request_body_bytes)
    app.include_router(health.router)
    app.include_router(auth_router)
    app.include_router(search_router)
    app.include_router(tasks_router)
    app.include_router(activity_router)
    app.include_router(stats_router)
    app.include_router(events_router)
    app.include_router(jobs_router)
    return app


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.gather(task, return_exceptions=True)
