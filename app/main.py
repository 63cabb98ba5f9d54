"""create_app(): wiring only.

The lifespan starts things in one readable order — settings are already read, then:
pools → (listener → cache → worker/scheduler, as those capabilities land) — and stops
them in reverse. Nothing here does I/O at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.config import Settings, get_settings
from app.db import Database, set_database
from app.observability import health
from app.observability.errors import install_error_handlers
from app.observability.logging import configure_logging
from app.observability.metrics import PoolCollector, register_collector
from app.observability.middleware import RequestMiddleware


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await Database.connect(settings)
        app.state.db = db
        set_database(db)
        unregister_pool_metrics = register_collector(
            PoolCollector(lambda: [(s.role, s.size, s.in_use, s.max_size) for s in db.stats()])
        )
        try:
            yield
        finally:
            unregister_pool_metrics()
            set_database(None)
            await db.close()

    app = FastAPI(
        title="pgfirst",
        summary="A Postgres-only reference backend.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_request_body_bytes)
    app.include_router(health.router)
    return app
