"""Projects and tasks: happy paths, ownership boundaries, pagination, bad input."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.deps import OpsAccess
from tests.auth_helpers import new_user


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, str]:
    return await new_user(client, "alice@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> dict[str, str]:
    return await new_user(client, "bob@example.com")


async def make_project(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "Home"
) -> int:
    response = await client.post(
        "/api/projects", json={"name": name, "color": "#ff0000"}, headers=headers
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def make_task(
    client: httpx.AsyncClient, headers: dict[str, str], **fields: object
) -> dict[str, object]:
    response = await client.post("/api/tasks", json={"title": "Do it", **fields}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_task_crud(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    project = await make_project(client, alice)
    task = await make_task(
        client, alice, body="details", project_id=project, due_at="2030-01-01T00:00:00Z"
    )
    assert task["project_name"] == "Home"
    assert task["project_color"] == "#ff0000"
    assert task["completed"] is False

    task_id = task["id"]
    got = (await client.get(f"/api/tasks/{task_id}", headers=alice)).json()
    assert got == task

    done = (
        await client.patch(
            f"/api/tasks/{task_id}", json={"completed": True, "title": "Done it"}, headers=alice
        )
    ).json()
    assert done["completed"] is True
    assert done["title"] == "Done it"
    assert done["body"] == "details"  # untouched fields stay
    detached = (
        await client.patch(f"/api/tasks/{task_id}", json={"project_id": None}, headers=alice)
    ).json()
    assert detached["project_id"] is None

    assert (await client.delete(f"/api/tasks/{task_id}", headers=alice)).status_code == 204
    assert (await client.get(f"/api/tasks/{task_id}", headers=alice)).status_code == 404


async def test_project_crud(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    project = await make_project(client, alice)
    task = await make_task(client, alice, project_id=project)
    renamed = await client.patch(f"/api/projects/{project}", json={"name": "Work"}, headers=alice)
    assert renamed.json()["name"] == "Work"
    assert (await client.get(f"/api/projects/{project}", headers=alice)).json()[
        "color"
    ] == "#ff0000"
    listed = (await client.get("/api/projects", headers=alice)).json()
    assert [p["id"] for p in listed["items"]] == [project]
    assert (await client.delete(f"/api/projects/{project}", headers=alice)).status_code == 204
    orphan = (await client.get(f"/api/tasks/{task['id']}", headers=alice)).json()
    assert orphan["project_id"] is None  # the task survives its project


async def test_other_users_rows_are_invisible(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    project = await make_project(client, alice)
    task = await make_task(client, alice, project_id=project)
    task_id = task["id"]
    assert (await client.get(f"/api/tasks/{task_id}", headers=bob)).status_code == 404
    assert (
        await client.patch(f"/api/tasks/{task_id}", json={"title": "mine"}, headers=bob)
    ).status_code == 404
    assert (await client.delete(f"/api/tasks/{task_id}", headers=bob)).status_code == 404
    assert (await client.get(f"/api/projects/{project}", headers=bob)).status_code == 404
    assert (
        await client.patch(f"/api/projects/{project}", json={"name": "x"}, headers=bob)
    ).status_code == 404
    assert (await client.delete(f"/api/projects/{project}", headers=bob)).status_code == 404
    assert (await client.get("/api/tasks", headers=bob)).json()["items"] == []
    assert (await client.get("/api/projects", headers=bob)).json()["items"] == []
    assert (await client.get(f"/api/tasks?project_id={project}", headers=bob)).json()["items"] == []
    # and nothing changed for alice
    assert (await client.get(f"/api/tasks/{task_id}", headers=alice)).json() == task


async def test_tasks_cannot_attach_to_another_users_project(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str], db_conn: object
) -> None:
    alices_project = await make_project(client, alice)
    create = await client.post(
        "/api/tasks", json={"title": "t", "project_id": alices_project}, headers=bob
    )
    assert create.status_code == 422
    bobs_task = await make_task(client, bob)
    move = await client.patch(
        f"/api/tasks/{bobs_task['id']}", json={"project_id": alices_project}, headers=bob
    )
    assert move.status_code == 422
    # the schema refuses it too, whatever the application code does
    import asyncpg

    bob_id = await db_conn.fetchval("SELECT id FROM users WHERE email = 'bob@example.com'")  # type: ignore[attr-defined]
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db_conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO tasks (user_id, project_id, title) VALUES ($1, $2, 'sneaky')",
            bob_id,
            alices_project,
        )


async def test_list_pages_with_a_cursor_and_filters(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    project = await make_project(client, alice)
    ids = []
    for n in range(7):
        task = await make_task(client, alice, title=f"t{n}", project_id=project if n % 2 else None)
        ids.append(task["id"])
    await client.patch(f"/api/tasks/{ids[0]}", json={"completed": True}, headers=alice)

    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/tasks", params=params, headers=alice)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    in_project = (await client.get(f"/api/tasks?project_id={project}", headers=alice)).json()[
        "items"
    ]
    assert [t["id"] for t in in_project] == [ids[5], ids[3], ids[1]]
    done = (await client.get("/api/tasks?completed=true", headers=alice)).json()["items"]
    assert [t["id"] for t in done] == [ids[0]]
    open_ = (await client.get("/api/tasks?completed=false", headers=alice)).json()["items"]
    assert len(open_) == 6


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/tasks", {"title": ""}),
        ("post", "/api/tasks", {"title": "x" * 201}),
        ("post", "/api/tasks", {"title": "ok", "body": "x" * 20_001}),
        ("post", "/api/tasks", {"title": "ok", "project_id": "abc"}),
        ("post", "/api/tasks", {"title": "ok", "unknown_field": 1}),
        ("post", "/api/tasks", {"title": "ok", "due_at": "not a date"}),
        ("post", "/api/tasks", {"title": "ok", "project_id": 2**70}),
        ("post", "/api/projects", {"name": "p", "color": "red"}),
        ("get", "/api/tasks?limit=101", None),
        ("get", "/api/tasks?limit=0", None),
        ("get", "/api/tasks?cursor=forged", None),
        ("get", "/api/tasks?completed=maybe", None),
        ("get", "/api/tasks/abc", None),
        ("get", "/api/tasks/0", None),
        ("get", "/api/tasks/99999999999999999999999", None),
        ("get", "/api/tasks/12345", None),
        ("patch", "/api/tasks/12345", {"title": "x"}),
    ],
)
async def test_bad_input_gets_a_json_4xx(
    client: httpx.AsyncClient, alice: dict[str, str], method: str, path: str, body: object
) -> None:
    kwargs = {"json": body} if body is not None else {}
    response = await client.request(method, path, headers=alice, **kwargs)  # type: ignore[arg-type]
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()


async def test_list_query_strings_are_validated_like_any_parameter(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    # The list pages read their query string as one model (app/deps.py: read_query); a
    # client sees the same 422 as for any other parameter, after the same 401.
    response = await client.get("/api/tasks?limit=0&completed=maybe&other=ignored", headers=alice)
    assert response.status_code == 422
    body = response.json()
    assert [error["loc"] for error in body["errors"]] == [
        ["query", "completed"],
        ["query", "limit"],
    ]
    assert body["detail"].startswith("Invalid request: query.completed: ")
    projects = await client.get("/api/projects?limit=101", headers=alice)
    assert projects.status_code == 422
    assert projects.json()["errors"][0]["loc"] == ["query", "limit"]
    assert (await client.get("/api/tasks?limit=0")).status_code == 401
    for n in range(3):
        await client.post("/api/tasks", json={"title": f"t{n}"}, headers=alice)
    page = await client.get("/api/tasks?limit=5&limit=2", headers=alice)
    assert len(page.json()["items"]) == 2  # a repeated key: the last one counts


async def test_malformed_json_body_is_422(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    response = await client.post(
        "/api/tasks", content=b'{"title": ', headers=alice | {"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_routes_need_a_token(client: httpx.AsyncClient) -> None:
    for path in ("/api/tasks", "/api/projects", "/api/activity", "/api/auth/me"):
        response = await client.get(path)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}


async def test_every_change_is_in_the_activity_feed(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    from datetime import UTC, datetime

    from app.activity.partitions import maintain

    await maintain(
        client._transport.app.state.services.db,
        interval="month",
        premake=1,
        retention=2,
        now=datetime.now(UTC),
    )  # type: ignore[attr-defined]
    task = await make_task(client, alice)
    await client.patch(f"/api/tasks/{task['id']}", json={"completed": True}, headers=alice)
    await client.delete(f"/api/tasks/{task['id']}", headers=alice)
    feed = (await client.get("/api/activity", headers=alice)).json()
    assert [e["action"] for e in feed["items"]] == [
        "task.deleted",
        "task.completed",
        "task.created",
    ]
    assert all(e["subject_id"] == task["id"] for e in feed["items"])
    assert (await client.get("/api/activity", headers=bob)).json()["items"] == []
    assert (await client.get("/api/activity?limit=1000", headers=alice)).status_code == 422
    assert (await client.get("/api/activity?cursor=bad", headers=alice)).status_code == 400


async def test_ops_access_needs_an_admin_or_the_ops_token(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: object
) -> None:
    app: FastAPI = client._transport.app  # type: ignore[attr-defined]

    @app.get("/ops/test")
    async def ops_test(_: OpsAccess) -> dict[str, bool]:
        return {"ok": True}

    assert (await client.get("/ops/test")).status_code == 401
    assert (await client.get("/ops/test", headers=alice)).status_code == 403
    assert (
        await client.get("/ops/test", headers={"Authorization": "Bearer nope"})
    ).status_code == 403
    user_id = await db_conn.fetchval(  # type: ignore[attr-defined]
        "UPDATE users SET is_admin = true WHERE email = 'alice@example.com' RETURNING id"
    )
    # Still cached as a non-admin until the cached session state is dropped (as
    # `app users create-admin` does) or CACHE_AUTH_TTL_SECONDS pass.
    assert (await client.get("/ops/test", headers=alice)).status_code == 403
    await app.state.services.auth.forget_sessions(user_id)
    assert (await client.get("/ops/test", headers=alice)).status_code == 200
