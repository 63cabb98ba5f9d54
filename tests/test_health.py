import asyncio
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db import migrate
from app.db.migrate import head_revision
from app.main import create_app
from tests.conftest import database_name
from tests.helpers import app_process, eventually

OPS = {"Authorization": "Bearer ops-secret"}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(ops_token="ops-secret")


async def test_healthz_answers_without_touching_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_database_is_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz", headers=OPS)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["migrations"] == {"current": head_revision(), "head": head_revision()}
    assert body["checks"]["notifier"] == "listening"


async def test_public_readiness_says_ready_and_nothing_more(client: httpx.AsyncClient) -> None:
    # Migration revisions and pool sizes are for operators, not for anyone who asks.
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    forged = {"Authorization": "Bearer not-the-ops-token"}
    assert (await client.get("/readyz", headers=forged)).json() == {"status": "ready"}


async def test_readyz_is_503_when_database_goes_away(
    client: httpx.AsyncClient, pg_admin: asyncpg.Connection, database_url: str
) -> None:
    name = database_name(database_url)
    await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await pg_admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
    )
    try:
        response = await client.get("/readyz", headers=OPS)
        assert response.status_code == 503
        assert response.json()["status"] == "not ready"
        assert response.json()["checks"]["database"] != "ok"
        assert (await client.get("/readyz")).json() == {"status": "not ready"}
    finally:
        await pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    # and it recovers once the database is back (the pub/sub listener reconnects too)
    await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)


async def test_readyz_is_503_when_migrations_are_behind(
    make_settings: Callable[..., object], create_database: Callable[..., object]
) -> None:
    dsn = await create_database()  # type: ignore[misc]
    app = create_app(make_settings(database_url=dsn, ops_token="ops-secret"))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/readyz", headers=OPS)
            assert response.status_code == 503
            assert response.json()["checks"]["migrations"]["current"] is None
            await asyncio.to_thread(migrate.upgrade, dsn)
            assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_are_in_the_openapi_schema(
    client: httpx.AsyncClient, path: str
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert path in schema["paths"]


async def test_app_serves_from_a_real_process(database_url: str) -> None:
    async with app_process(database_url) as base_url, httpx.AsyncClient(base_url=base_url) as c:
        response = await c.get("/healthz")
        assert response.status_code == 200
        assert response.headers["x-request-id"]
