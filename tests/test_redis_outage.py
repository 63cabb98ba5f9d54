"""With the Redis backends on and Redis unreachable, requests degrade instead of failing."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx

from app.config import Settings
from app.main import create_app
from tests.helpers import free_port


async def test_rate_limits_count_in_postgres_while_redis_is_unreachable(
    make_settings: Callable[..., Settings], db_conn: asyncpg.Connection
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        rate_limit_backend="redis",
        rate_limit_signup_per_ip=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            statuses = [
                (
                    await client.post(
                        "/api/auth/signup",
                        json={"email": f"u{n}@example.com", "password": "a long passphrase 1"},
                    )
                ).status_code
                for n in range(3)
            ]
    counted = await db_conn.fetchval("SELECT count(*) FROM rate_limits WHERE key LIKE 'signup:%'")
    assert statuses == [202, 202, 429]
    assert counted > 0
