"""Read routing against a real streaming replica: round robin, read-your-writes by LSN,
lag, fallback to the primary and return (tests/replica.py makes the pair)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from app.config import Settings
from app.db import Database, routing
from app.db.read_your_writes import COOKIE
from app.deps import DatabaseDep
from app.main import create_app
from tests import replica
from tests.auth_helpers import new_user
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import eventually
from tests.replica import ReplicaApp, Replication, StartApp, add_probe_route

# The pair's fixtures, made visible to pytest in this module.
replication = replica.replication
replication_ready = replica.replication_ready
start_replica_app = replica.start_replica_app
replica_app = replica.replica_app

SECRET = "s" * 40


def routed(target: str, reason: str) -> float:
    labels = {"target": target, "reason": reason}
    return REGISTRY.get_sample_value("db_read_routes_total", labels) or 0.0


def replica_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"replica": "replica-0"})


async def served_by(client: httpx.AsyncClient, method: str = "GET") -> dict[str, object]:
    response = await client.request(method, "/test/read")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def task_count(replication: Replication) -> int:
    conn = await asyncpg.connect(replication.primary_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM tasks")
    finally:
        await conn.close()
    return count


async def write_on_primary(replication: Replication) -> None:
    conn = await asyncpg.connect(replication.primary_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS lag_probe (at timestamptz)")
        await conn.execute("INSERT INTO lag_probe VALUES (now())")
    finally:
        await conn.close()


# --- routing -----------------------------------------------------------------------------


async def test_reads_without_a_write_go_to_the_replica(replica_app: ReplicaApp) -> None:
    async with replica_app.client() as client:
        assert (await served_by(client))["replica"] is True


async def test_unsafe_methods_read_from_the_primary(replica_app: ReplicaApp) -> None:
    async with replica_app.client() as client:
        assert (await served_by(client, "POST"))["replica"] is False


async def test_reads_after_a_commit_in_the_same_request_use_the_primary(
    start_replica_app: StartApp,
) -> None:
    async with start_replica_app() as started:

        @started.app.get("/test/commit-then-read")
        async def commit_then_read(db: DatabaseDep) -> dict[str, object]:
            async with db.acquire(read=True) as conn:
                before = await conn.fetchval("SELECT pg_is_in_recovery()")
            async with db.transaction() as conn:
                await conn.execute("SELECT pg_current_xact_id()")
            async with db.acquire(read=True) as conn:
                after = await conn.fetchval("SELECT pg_is_in_recovery()")
            return {"before": before, "after": after}

        async with started.client() as client:
            response = await client.get("/test/commit-then-read")
    assert response.json() == {"before": True, "after": False}
    assert response.headers["x-read-after"]


async def test_a_writer_is_back_on_the_replica_once_it_replayed_the_write(
    replica_app: ReplicaApp, replication_ready: Replication
) -> None:
    async with replica_app.client() as writer:
        headers = await new_user(writer, "back@example.com")
        before = await task_count(replication_ready)
        created = await writer.post("/api/tasks", json={"title": "replayed"}, headers=headers)
        assert created.status_code == 201
        assert COOKIE in writer.cookies
        await replication_ready.caught_up()
        caught_up = routed("replica", "caught_up")
        assert await served_by(writer) == {"replica": True, "tasks": before + 1}
    assert routed("replica", "caught_up") == caught_up + 1


async def test_a_position_sent_as_a_header_counts_like_the_cookie(
    replica_app: ReplicaApp,
) -> None:
    not_yet_written = routing.sign_position(TEST_SECRET_KEY, 2**62)
    async with replica_app.client() as client:
        response = await client.get("/test/read", headers={"X-Read-After": not_yet_written})
    assert response.json()["replica"] is False


async def test_a_position_the_server_did_not_sign_is_ignored(replica_app: ReplicaApp) -> None:
    forged = routing.sign_position("not-the-server-key-" * 3, 2**62)
    async with replica_app.client() as client:
        response = await client.get("/test/read", headers={"X-Read-After": forged})
    assert response.json()["replica"] is True


# --- read-your-writes under lag ------------------------------------------------------------


async def test_a_writer_reads_its_write_while_others_read_the_lagging_replica(
    replica_app: ReplicaApp, replication_ready: Replication
) -> None:
    async with replica_app.client() as writer, replica_app.client() as other:
        writer_auth = await new_user(writer, "writer@example.com")
        other_auth = await new_user(other, "other@example.com")
        await replication_ready.caught_up()
        before = await task_count(replication_ready)
        await replication_ready.set_apply_delay(3)
        try:
            created = await writer.post(
                "/api/tasks", json={"title": "mine, at once"}, headers=writer_auth
            )
            assert created.status_code == 201
            task_id = created.json()["id"]

            feed = await writer.get("/api/activity", headers=writer_auth)
            assert task_id in [entry["subject_id"] for entry in feed.json()["items"]]
            assert await served_by(writer) == {"replica": False, "tasks": before + 1}

            other_read = await other.get("/test/read", headers=other_auth)
            assert other_read.json() == {"replica": True, "tasks": before}
        finally:
            await replication_ready.set_apply_delay(0)


# --- health: down, back, lag -------------------------------------------------------------


async def test_reads_fall_back_to_the_primary_while_the_replica_is_down_and_return(
    replica_app: ReplicaApp, replication_ready: Replication
) -> None:
    replicas = replica_app.services.db.replicas
    assert replicas is not None
    async with replica_app.client() as client:
        assert (await served_by(client))["replica"] is True

        await replication_ready.stop_replica()
        await eventually(lambda: served_by(client), lambda body: body["replica"] is False)
        assert not replicas.replicas[0].healthy
        assert replica_gauge("db_replica_healthy") == 0

        await replication_ready.start_replica()
        await eventually(lambda: served_by(client), lambda body: body["replica"] is True)
        assert replica_gauge("db_replica_healthy") == 1


async def test_replica_lag_is_measured_in_bytes_and_seconds(
    replica_app: ReplicaApp, replication_ready: Replication
) -> None:
    # A replayed transaction first: seconds are counted from the last one replayed.
    await write_on_primary(replication_ready)
    await replication_ready.caught_up()
    await replication_ready.set_apply_delay(2)
    try:
        await write_on_primary(replication_ready)

        async def lag() -> tuple[float | None, float | None]:
            return replica_gauge("db_replica_lag_bytes"), replica_gauge("db_replica_lag_seconds")

        await eventually(lag, lambda both: (both[0] or 0) > 0 and (both[1] or 0) > 0)
        await eventually(lag, lambda both: both == (0.0, 0.0))
    finally:
        await replication_ready.set_apply_delay(0)


async def test_a_replica_lagging_past_the_limit_takes_no_reads_until_it_catches_up(
    start_replica_app: StartApp, replication_ready: Replication
) -> None:
    await write_on_primary(replication_ready)
    await replication_ready.caught_up()
    async with start_replica_app(database_replica_max_lag_seconds=0.5) as started:
        await replication_ready.set_apply_delay(2)
        try:
            unavailable = routed("primary", "unavailable")
            await write_on_primary(replication_ready)
            async with started.client() as client:
                await eventually(lambda: served_by(client), lambda body: body["replica"] is False)
                assert routed("primary", "unavailable") > unavailable
                await eventually(
                    lambda: served_by(client), lambda body: body["replica"] is True, within=15
                )
        finally:
            await replication_ready.set_apply_delay(0)


async def test_a_replica_leaves_the_rotation_on_the_second_lagging_check_not_the_first(
    make_settings: Callable[..., Settings], replication_ready: Replication
) -> None:
    settings = make_settings(
        database_url=replication_ready.primary_url,
        database_replica_urls=[replication_ready.replica_url],
        database_replica_check_interval=3600,  # the test runs each check itself
        database_replica_max_lag_seconds=0.001,
    )
    db = await Database.connect(settings, replication_ready.primary_url)
    try:
        assert db.replicas is not None
        replica = db.replicas.replicas[0]
        assert replica.healthy
        await write_on_primary(replication_ready)  # seconds count from a replayed commit
        await replication_ready.caught_up()
        await replication_ready.set_apply_delay(3)
        await write_on_primary(replication_ready)
        await eventually(
            lambda: replication_ready.query_replica(
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()"
            )
        )
        await db.replicas.check()
        assert replica.healthy
        await db.replicas.check()
        assert not replica.healthy
    finally:
        await replication_ready.set_apply_delay(0)
        await db.close()


async def test_the_app_reads_from_the_primary_when_no_replica_answers(
    make_settings: Callable[..., Settings], tmp_path: object
) -> None:
    settings = make_settings(database_replica_urls=[f"postgresql://postgres@/x?host={tmp_path}"])
    app: FastAPI = create_app(settings)
    add_probe_route(app)
    unavailable = routed("primary", "unavailable")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await served_by(client))["replica"] is False
    assert routed("primary", "unavailable") == unavailable + 1


# --- the position token ------------------------------------------------------------------


def test_a_signed_position_reads_back() -> None:
    assert routing.read_position(SECRET, routing.sign_position(SECRET, 0x3000060)) == 0x3000060


def test_a_position_signed_with_another_key_is_ignored() -> None:
    token = routing.sign_position("another-key-" * 4, 0x3000060)
    assert routing.read_position(SECRET, token) is None


def test_an_edited_position_is_ignored() -> None:
    token = routing.sign_position(SECRET, 0x3000060)
    assert routing.read_position(SECRET, "4" + token[1:]) is None


def test_an_expired_position_is_ignored() -> None:
    token = routing.sign_position(SECRET, 0x3000060, now=1_000_000)
    later = 1_000_000 + routing.TOKEN_SECONDS + 1
    assert routing.read_position(SECRET, token, now=later) is None
