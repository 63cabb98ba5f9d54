"""The cache in the app: ETag/304, cached lists across processes, stats, failure = miss."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from app.config import Settings
from app.jobs import enqueue
from app.jobs.worker import Worker
from app.main import create_app
from tests.auth_helpers import new_user
from tests.helpers import app_process, eventually, flushed_redis, free_port


async def test_task_reads_answer_304_until_the_data_changes(client: httpx.AsyncClient) -> None:
    alice = await new_user(client, "alice@example.com")
    created = await client.post("/api/tasks", json={"title": "Pay rent"}, headers=alice)
    task_id = created.json()["id"]

    first = await client.get("/api/tasks", headers=alice)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert first.headers["cache-control"] == "private, no-cache"
    assert first.headers["vary"] == "Authorization"

    again = await client.get("/api/tasks", headers={**alice, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    # Another filter is another resource, with its own tag.
    other = await client.get("/api/tasks?completed=false", headers={**alice, "If-None-Match": etag})
    assert other.status_code == 200

    one = await client.get(f"/api/tasks/{task_id}", headers=alice)
    one_etag = one.headers["etag"]
    unchanged = await client.get(
        f"/api/tasks/{task_id}", headers={**alice, "If-None-Match": one_etag}
    )
    assert unchanged.status_code == 304

    await client.patch(f"/api/tasks/{task_id}", json={"completed": True}, headers=alice)
    changed = await client.get("/api/tasks", headers={**alice, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["items"][0]["completed"] is True
    refreshed = await client.get(
        f"/api/tasks/{task_id}", headers={**alice, "If-None-Match": one_etag}
    )
    assert refreshed.status_code == 200


def metric(name: str, **labels: str) -> float:
    """One sample of the open app's metrics (0 until it is first counted): tests compare
    it before and after, since other tests count on the same series."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def cache_reads(prefix: str, result: str) -> float:
    return metric("cache_reads_total", prefix=prefix, result=result)


async def test_a_repeated_list_request_is_served_from_l1(client: httpx.AsyncClient) -> None:
    alice = await new_user(client, "alice@example.com")
    await client.post("/api/tasks", json={"title": "Pay rent"}, headers=alice)
    first = await client.get("/api/tasks", headers=alice)
    hits = cache_reads("tasks", "l1_hit")

    again = await client.get("/api/tasks", headers=alice)

    assert again.json() == first.json()
    assert cache_reads("tasks", "l1_hit") == hits + 1


async def test_the_session_behind_a_new_token_is_looked_up_once_then_from_l1(
    client: httpx.AsyncClient,
) -> None:
    alice = await new_user(client, "alice@example.com")
    misses, hits = cache_reads("auth", "miss"), cache_reads("auth", "l1_hit")

    await client.get("/api/auth/me", headers=alice)
    first_misses = cache_reads("auth", "miss")
    assert first_misses > misses
    await client.get("/api/auth/me", headers=alice)
    assert cache_reads("auth", "miss") == first_misses
    assert cache_reads("auth", "l1_hit") > hits


async def test_cached_pages_never_cross_users(client: httpx.AsyncClient) -> None:
    alice = await new_user(client, "alice@example.com")
    bob = await new_user(client, "bob@example.com")
    await client.post("/api/tasks", json={"title": "Alice's"}, headers=alice)
    await client.post("/api/projects", json={"name": "Bob's project"}, headers=bob)
    alice_page = await client.get("/api/tasks", headers=alice)
    bob_page = await client.get("/api/tasks", headers=bob)
    assert [t["title"] for t in alice_page.json()["items"]] == ["Alice's"]
    assert bob_page.json()["items"] == []
    # Alice's ETag means nothing for Bob.
    bob_again = await client.get(
        "/api/tasks", headers={**bob, "If-None-Match": alice_page.headers["etag"]}
    )
    assert bob_again.status_code == 200
    projects = await client.get("/api/projects", headers=bob)
    assert [p["name"] for p in projects.json()["items"]] == ["Bob's project"]
    assert (await client.get("/api/projects", headers=alice)).json()["items"] == []


async def test_the_refresh_job_brings_new_tasks_into_stats(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice = await new_user(client, "alice@example.com")
    for title in ("one", "two", "three"):
        created = await client.post("/api/tasks", json={"title": title}, headers=alice)
    await client.patch(
        f"/api/tasks/{created.json()['id']}", json={"completed": True}, headers=alice
    )

    stale = await client.get("/api/stats/me", headers=alice)
    assert stale.status_code == 200
    assert stale.json()["task_count"] == 0  # the view was refreshed before these tasks
    assert stale.headers["cache-control"] == "private, max-age=60"

    # The periodic job refreshes only once STATS_REFRESH_SECONDS have passed: age the mark.
    async with app.state.services.db.acquire() as conn:
        await conn.execute("UPDATE matview_refreshes SET refreshed_at = now() - interval '1 hour'")
    await enqueue("pgfirst.refresh_user_stats", {})
    await Worker(app.state.services.jobs, burst=True).run()

    fresh = await client.get(
        "/api/stats/me", headers={**alice, "If-None-Match": stale.headers["etag"]}
    )
    assert fresh.status_code == 200
    body = fresh.json()
    assert (body["task_count"], body["completed_count"], body["open_count"]) == (3, 1, 2)
    assert body["last_activity_at"] is not None
    assert body["refreshed_at"] > stale.json()["refreshed_at"]
    unchanged = await client.get(
        "/api/stats/me", headers={**alice, "If-None-Match": fresh.headers["etag"]}
    )
    assert unchanged.status_code == 304


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_a_write_on_one_instance_reaches_another_instances_cache(
    backend: str, database_url: str, request: pytest.FixtureRequest
) -> None:
    env = {"CACHE_BACKEND": backend, "CACHE_L1_TTL_SECONDS": "300"}
    if backend == "redis":
        env["REDIS_URL"] = await flushed_redis(request.getfixturevalue("redis_url"))
    async with (
        app_process(database_url, **env) as first_url,
        app_process(database_url, **env) as second_url,
        httpx.AsyncClient(base_url=first_url) as first,
        httpx.AsyncClient(base_url=second_url) as second,
    ):
        alice = await new_user(first, "alice@example.com")
        await first.post("/api/tasks", json={"title": "before"}, headers=alice)
        # The second instance caches the page (and the data version) in its L1.
        for _ in range(2):
            page = await second.get("/api/tasks", headers=alice)
            assert [t["title"] for t in page.json()["items"]] == ["before"]
        await first.post("/api/tasks", json={"title": "after"}, headers=alice)

        async def titles() -> list[str]:
            response = await second.get("/api/tasks", headers=alice)
            return [t["title"] for t in response.json()["items"]]

        # Well inside the 300 s L1 TTL: only the invalidation can explain the change.
        assert await eventually(titles, lambda seen: seen == ["after", "before"], within=3)

        # Logging out on the first instance ends the session on the second one too.
        assert (await first.post("/api/auth/logout", headers=alice)).status_code == 204

        async def status() -> int:
            return (await second.get("/api/tasks", headers=alice)).status_code

        assert await eventually(status, lambda code: code == 401, within=3)


async def test_the_app_serves_when_the_cache_backend_is_down(
    make_settings: Callable[..., Settings],
) -> None:
    settings: Settings = make_settings(
        cache_backend="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        cache_timeout_seconds=0.2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            alice = await new_user(client, "alice@example.com")
            get_errors = metric("cache_errors_total", operation="get")
            await client.post("/api/tasks", json={"title": "still works"}, headers=alice)
            for _ in range(2):
                page = await client.get("/api/tasks", headers=alice)
                assert page.status_code == 200
                assert [t["title"] for t in page.json()["items"]] == ["still works"]
            assert metric("cache_errors_total", operation="get") > get_errors
            assert (await client.get("/readyz")).status_code == 200
