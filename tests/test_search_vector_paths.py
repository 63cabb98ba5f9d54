"""Vector search takes one of two paths: an exact scan of a small user's own tasks, or the
HNSW index for a large user. Both give the same answers; each plan is the one intended."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.search import service as sql
from app.search.embedder import HashingEmbedder
from tests.auth_helpers import new_user
from tests.search_helpers import CORPUS, add_tasks, search, user_id

LARGE = 4  # SEARCH_EXACT_SCAN_BELOW here: the corpus (6 tasks) makes its owner a large user
EXACT_FOR_ALL = {"search_exact_scan_below": 10**6, "search_hybrid_exact_scan_below": 10**6}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(search_exact_scan_below=LARGE, search_hybrid_exact_scan_below=LARGE)


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, str]:
    headers = await new_user(client, "alice@example.com")
    await add_tasks(client, headers, CORPUS)
    return headers


def the_app(client: httpx.AsyncClient) -> FastAPI:
    return client._transport.app  # type: ignore[attr-defined,no-any-return]


def change_settings(app: FastAPI, **update: object) -> None:
    """Routes read their settings from the services: swap in changed ones mid-test."""
    services = app.state.services
    app.state.services = dataclasses.replace(
        services, settings=services.settings.model_copy(update=update)
    )


async def plans(client: httpx.AsyncClient, owner: int) -> dict[str, str]:
    """EXPLAIN of the semantic, hybrid and similar statements, as the app runs them."""
    app = the_app(client)
    settings: Settings = app.state.services.settings
    vector = HashingEmbedder().embed("budget")
    lang = sql.lang_literal(settings.search_language)
    explained = {}
    cache = app.state.services.cache
    async with app.state.services.db.acquire() as conn:
        any_task = await conn.fetchval("SELECT id FROM tasks WHERE user_id = $1 LIMIT 1", owner)
        statements = {
            "semantic": ("$2", sql.SEMANTIC, (owner, vector, 10)),
            "hybrid": ("$3", sql.HYBRID, (owner, "budget", vector, 40, 1.0, 1.0, 20)),
            "similar": ("(SELECT embedding FROM source)", sql.SIMILAR, (owner, any_task, 10)),
        }
        for name, (vector_sql, statement, args) in statements.items():
            exact_below = settings.search_hybrid_exact_scan_below if name == "hybrid" else None
            async with sql.nearest_first(
                conn, cache, settings, owner, vector_sql, exact_below=exact_below
            ) as order:
                text = statement.format(lang=lang, nearest_first=order)
                rows = await conn.fetch("EXPLAIN " + text, *args)
            explained[name] = "\n".join(row[0] for row in rows)
    return explained


async def test_a_large_users_nearest_tasks_come_from_the_hnsw_index(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    for name, plan in (await plans(client, await user_id(db_conn, "alice@example.com"))).items():
        assert "Index Scan using tasks_embedding" in plan, (name, plan)


async def test_hybrid_keeps_the_exact_path_up_to_its_own_threshold(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    app = the_app(client)
    change_settings(app, search_hybrid_exact_scan_below=1000)
    explained = await plans(client, await user_id(db_conn, "alice@example.com"))
    assert "tasks_embedding" not in explained["hybrid"], explained["hybrid"]
    assert "Index Scan using tasks_embedding" in explained["semantic"], explained["semantic"]


async def test_a_small_users_nearest_tasks_come_from_an_exact_scan(
    client: httpx.AsyncClient, db_conn: asyncpg.Connection
) -> None:
    bob = await new_user(client, "bob@example.com")
    await add_tasks(client, bob, CORPUS[: LARGE - 1])
    for name, plan in (await plans(client, await user_id(db_conn, "bob@example.com"))).items():
        assert "tasks_embedding" not in plan, (name, plan)
        # Ordered by the similarity, which no index serves: a sort of the user's rows.
        assert re.search(r"Sort Key: \(\('1'::double precision - \(t(_\d)?\.embedding <=>", plan), (
            name,
            plan,
        )


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
async def test_both_paths_find_the_same_tasks(
    client: httpx.AsyncClient, alice: dict[str, str], mode: str
) -> None:
    app = the_app(client)
    through_index = [hit["id"] for hit in await search(client, alice, "quarterly budget", mode)]
    change_settings(app, **EXACT_FOR_ALL)
    exact = [hit["id"] for hit in await search(client, alice, "quarterly budget", mode)]
    assert exact
    assert through_index == exact


async def test_similar_is_the_same_on_both_paths(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    app = the_app(client)
    [first, *_] = await search(client, alice, "invoice", "semantic")

    async def similar() -> list[int]:
        response = await client.get(f"/api/tasks/{first['id']}/similar", headers=alice)
        assert response.status_code == 200
        return [hit["id"] for hit in response.json()["items"]]

    through_index = await similar()
    change_settings(app, **EXACT_FOR_ALL)
    assert through_index == await similar()
    assert first["id"] not in through_index
    assert len(through_index) == len(CORPUS) - 1


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
async def test_the_index_path_only_finds_the_callers_tasks(
    client: httpx.AsyncClient, alice: dict[str, str], mode: str
) -> None:
    bob = await new_user(client, "bob@example.com")
    await add_tasks(client, bob, [(f"Bob's chore {n}", "mow the lawn") for n in range(LARGE)])
    hits = await search(client, bob, "quarterly invoice budget", mode)
    assert hits
    assert all(str(hit["title"]).startswith("Bob's chore") for hit in hits)


async def test_the_exact_path_reads_the_users_vectors_from_the_covering_index(
    client: httpx.AsyncClient, db_conn: asyncpg.Connection
) -> None:
    """tasks_user_vectors holds id and embedding, so the exact path never visits the heap,
    where a user's rows lie one per page between everybody else's."""
    app = the_app(client)
    change_settings(app, **EXACT_FOR_ALL)
    await new_user(client, "busy@example.com")
    await new_user(client, "crowd@example.com")
    # Everybody else's rows need no vectors to make the heap the long way round (and an
    # HNSW insert per row would make this test slow).
    await db_conn.execute(
        "INSERT INTO tasks (user_id, title, embedding, embedded_at) "
        "SELECT u.id, 'chore ' || n, "
        "       CASE WHEN u.email = 'busy@example.com' "
        "            THEN array_fill(0.0625::real, ARRAY[256])::vector END, now() "
        "FROM users u, generate_series(1, 20000) AS n "
        "WHERE u.email = 'crowd@example.com' OR (u.email = 'busy@example.com' AND n <= 1000)"
    )
    await db_conn.execute("VACUUM ANALYZE tasks")  # index-only scans need the visibility map
    for name, plan in (await plans(client, await user_id(db_conn, "busy@example.com"))).items():
        assert "Index Only Scan using tasks_user_vectors" in plan, (name, plan)


async def test_which_path_a_user_takes_is_cached(
    client: httpx.AsyncClient, db_conn: asyncpg.Connection
) -> None:
    app = the_app(client)
    settings: Settings = app.state.services.settings
    cache = app.state.services.cache
    await new_user(client, "bob@example.com")
    bob = await user_id(db_conn, "bob@example.com")
    async with app.state.services.db.acquire() as conn:
        assert not await sql.takes_index(conn, cache, settings, bob)
        await conn.executemany(
            "INSERT INTO tasks (user_id, title) VALUES ($1, $2)",
            [(bob, f"chore {n}") for n in range(LARGE)],
        )
        assert not await sql.takes_index(conn, cache, settings, bob)  # the cached answer
        assert await cache.delete(sql.size_key(LARGE, bob))
        assert await sql.takes_index(conn, cache, settings, bob)  # counted again
        raised = settings.model_copy(update=EXACT_FOR_ALL)
        assert not await sql.takes_index(conn, cache, raised, bob)  # another threshold, another key
