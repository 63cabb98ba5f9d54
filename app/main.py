"""create_app(): wiring only.

The lifespan opens the services (pools → notifier → cache → broker → auth; see
app/services.py) and, with JOBS_INLINE_WORKER, runs a job worker on them; it closes
everything in reverse. Production runs `app worker` as its own process instead. Nothing
here does I/O at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.activity.router import router as activity_router
from app.auth.router import router as auth_router
from app.config import Settings, load_settings
from app.db.read_your_writes import ReadYourWritesMiddleware
from app.deps import declare_bearer_scheme
from app.jobs.router import router as jobs_router
from app.jobs.worker import Worker
from app.observability.errors import install_error_handlers
from app.observability.logging import configure_logging
from app.observability.middleware import RequestMiddleware
from app.observability.router import private_openapi_router
from app.observability.router import router as health_router
from app.pubsub.router import router as events_router
from app.runtime import freeze_startup_heap
from app.search.router import router as search_router
from app.services import open_services
from app.signals import ProcessReporter
from app.signals.router import router as signals_router
from app.stats.router import router as stats_router
from app.tasks.router import router as tasks_router

# Routes are tried in this order and every miss costs the router a match attempt, so the
# most requested come first: health checks, then the domain's reads and writes (the task
# list spent a fifth of its time matching the 24 routes before it).
ROUTERS = (
    health_router,
    tasks_router,
    auth_router,
    search_router,
    activity_router,
    stats_router,
    events_router,
    jobs_router,
    signals_router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            # HTTP, pool and cache signals live in this process: written where the
            # advisor in any process reads them (app/signals/process.py).
            reporter = ProcessReporter(services.db, services.cache, settings)
            await reporter.start()
            app.state.signal_reporter = reporter
            worker_task: asyncio.Task[None] | None = None
            if settings.run_inline_worker:
                worker = Worker(services.jobs)
                worker_task = asyncio.create_task(worker.run(), name="inline-worker")
            if settings.gc_freeze_after_startup:
                freeze_startup_heap()
            try:
                yield
            finally:
                if worker_task is not None:
                    worker.stop()
                    await asyncio.gather(worker_task, return_exceptions=True)
                await reporter.stop()
                del app.state.services

    # API_DOCS_PUBLIC off (production's default): no /docs or /redoc, and /openapi.json
    # only for an operator — the schema maps every route an attacker could try.
    public_docs = bool(settings.api_docs_public)
    app = FastAPI(
        title="pgfirst",
        summary="A Postgres-only reference backend.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
    )
    if not public_docs:
        app.include_router(private_openapi_router)
    declare_bearer_scheme(app, ROUTERS)  # before the error responses: they add 401 there
    install_error_handlers(app)
    if settings.database_replica_urls:
        app.add_middleware(ReadYourWritesMiddleware)  # inside RequestMiddleware
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        body_timeout=settings.request_body_timeout_seconds,
    )
    for router in ROUTERS:
        app.include_router(router)
    return app
