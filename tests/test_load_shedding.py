"""A request that cannot get a database connection in time is shed with 503 and
Retry-After, instead of queueing past its client's timeout."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.deps import DbConn
from app.main import create_app


async def test_a_request_that_waits_too_long_for_a_connection_gets_503(
    make_settings: Callable[..., Settings],
) -> None:
    app: FastAPI = create_app(
        make_settings(db_pool_min=0, db_pool_max=1, db_pool_acquire_timeout=0.2)
    )

    @app.get("/test/query")
    async def query(conn: DbConn) -> dict[str, int]:
        return {"one": await conn.fetchval("SELECT 1")}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/test/query")).json() == {"one": 1}
            async with app.state.services.db.acquire():  # the pool's only connection
                shed = await client.get("/test/query")
            served = await client.get("/test/query")

    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "2"
    assert shed.json()["detail"] == "Service temporarily unavailable"
    assert served.json() == {"one": 1}
