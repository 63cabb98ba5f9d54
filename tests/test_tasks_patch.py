"""A PATCH that changes no value writes nothing: no updated_at, no activity row, no event,
no new data version, no re-embedding. One that changes something does each exactly once."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.auth_helpers import new_user
from tests.search_helpers import embed_all, user_id

EMPTY_TASK_PATCHES = [{}, {"title": None, "body": None, "completed": None}]
EMPTY_PROJECT_PATCHES = [{}, {"name": None, "color": None}]


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, str]:
    return await new_user(client, "alice@example.com")


async def footprint(
    db: asyncpg.Connection, email: str, task_id: int | None = None
) -> dict[str, Any]:
    """Everything a write leaves behind, for one user (and one of their tasks)."""
    owner = await user_id(db, email)
    return {
        "updated_at": await db.fetchval("SELECT updated_at FROM tasks WHERE id = $1", task_id),
        "activity": await db.fetchval(
            "SELECT count(*) FROM activity_logs WHERE user_id = $1", owner
        ),
        "events": await db.fetchval(
            "SELECT count(*) FROM events WHERE channel = $1", f"user:{owner}"
        ),
        "version": await db.fetchval(
            "SELECT version FROM user_data_versions WHERE user_id = $1", owner
        ),
        "embed_jobs": await db.fetchval(
            "SELECT count(*) FROM jobs WHERE name = 'pgfirst.embed_task'"
        ),
    }


async def make_task(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    project = await client.post("/api/projects", json={"name": "Home"}, headers=headers)
    created = await client.post(
        "/api/tasks",
        json={
            "title": "Pay rent",
            "body": "before the 5th",
            "project_id": project.json()["id"],
            "due_at": "2030-01-01T00:00:00Z",
        },
        headers=headers,
    )
    assert created.status_code == 201
    await embed_all(client)  # the creation's embedding job is done: a new one would show
    return created.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("patch", EMPTY_TASK_PATCHES, ids=["empty", "nulls"])
async def test_a_task_patch_without_values_changes_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection, patch: dict
) -> None:
    task = await make_task(client, alice)
    before = await footprint(db_conn, "alice@example.com", task["id"])

    response = await client.patch(f"/api/tasks/{task['id']}", json=patch, headers=alice)

    assert response.status_code == 200
    assert response.json() == task
    assert await footprint(db_conn, "alice@example.com", task["id"]) == before


async def test_a_task_patch_with_the_current_values_changes_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    task = await make_task(client, alice)
    before = await footprint(db_conn, "alice@example.com", task["id"])
    same = {
        "title": task["title"],
        "body": task["body"],
        "project_id": task["project_id"],
        "due_at": "2030-01-01T01:00:00+01:00",  # the same instant, written another way
        "completed": False,
    }

    response = await client.patch(f"/api/tasks/{task['id']}", json=same, headers=alice)

    assert response.status_code == 200
    assert response.json() == task
    assert await footprint(db_conn, "alice@example.com", task["id"]) == before


async def test_a_task_patch_that_changes_a_value_is_written_and_announced_once(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    task = await make_task(client, alice)
    before = await footprint(db_conn, "alice@example.com", task["id"])

    response = await client.patch(
        f"/api/tasks/{task['id']}", json={"body": "before the 1st"}, headers=alice
    )

    after = await footprint(db_conn, "alice@example.com", task["id"])
    assert response.json()["body"] == "before the 1st"
    assert after["updated_at"] > before["updated_at"]
    assert (after["activity"], after["events"], after["version"], after["embed_jobs"]) == (
        before["activity"] + 1,
        before["events"] + 1,
        before["version"] + 1,
        before["embed_jobs"] + 1,
    )


async def test_a_patch_that_resends_the_text_does_not_queue_a_new_embedding(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    task = await make_task(client, alice)
    before = await footprint(db_conn, "alice@example.com", task["id"])

    response = await client.patch(
        f"/api/tasks/{task['id']}",
        json={"title": task["title"], "body": task["body"], "completed": True},
        headers=alice,
    )

    assert response.json()["completed"] is True
    after = await footprint(db_conn, "alice@example.com", task["id"])
    assert after["updated_at"] > before["updated_at"]
    assert after["embed_jobs"] == before["embed_jobs"]


@pytest.mark.parametrize("patch", EMPTY_PROJECT_PATCHES, ids=["empty", "nulls"])
async def test_a_project_patch_without_values_changes_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection, patch: dict
) -> None:
    created = await client.post(
        "/api/projects", json={"name": "Home", "color": "#ff0000"}, headers=alice
    )
    project = created.json()
    before = await footprint(db_conn, "alice@example.com")

    response = await client.patch(f"/api/projects/{project['id']}", json=patch, headers=alice)

    assert response.status_code == 200
    assert response.json() == project
    assert await footprint(db_conn, "alice@example.com") == before


async def test_a_project_patch_with_the_current_values_changes_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    created = await client.post(
        "/api/projects", json={"name": "Home", "color": "#ff0000"}, headers=alice
    )
    project = created.json()
    before = await footprint(db_conn, "alice@example.com")

    response = await client.patch(
        f"/api/projects/{project['id']}", json={"name": "Home", "color": "#ff0000"}, headers=alice
    )

    assert response.json() == project
    assert await footprint(db_conn, "alice@example.com") == before


async def test_an_empty_patch_of_another_users_task_is_not_found(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    task = await make_task(client, alice)
    bob = await new_user(client, "bob@example.com")
    assert (await client.patch(f"/api/tasks/{task['id']}", json={}, headers=bob)).status_code == 404
    project_id = task["project_id"]
    assert (
        await client.patch(f"/api/projects/{project_id}", json={}, headers=bob)
    ).status_code == 404
