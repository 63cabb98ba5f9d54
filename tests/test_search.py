"""Search: ranking, snippets, typos, vectors, fusion, isolation and hostile input."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from app.search import service as sql
from app.search.embedder import DIMENSIONS, HashingEmbedder
from tests.auth_helpers import new_user
from tests.search_helpers import CORPUS, add_tasks, embed_all, search, titles, user_id


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, str]:
    headers = await new_user(client, "alice@example.com")
    await add_tasks(client, headers, CORPUS)
    return headers


async def test_title_matches_rank_above_body_matches(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    hits = await search(client, alice, "invoice")
    assert titles(hits)[:2] == ["Invoice for ACME", "Weekly planning"]


async def test_phrase_and_exclusion_work_as_typed(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    assert titles(await search(client, alice, '"quarterly invoice"')) == ["Invoice for ACME"]
    assert "Budget review" not in titles(await search(client, alice, "budget -board"))
    assert "Weekly planning" in titles(await search(client, alice, "budget -board"))
    assert set(titles(await search(client, alice, "tomatoes OR dentist"))) == {
        "Garden",
        "Dentist appointment",
    }


async def test_snippets_highlight_and_escape(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    [hit] = await search(client, alice, "dentist")
    snippet = str(hit["snippet"])
    assert "«dentist»" in snippet
    assert "<script>" not in snippet
    assert "&lt;script&gt;" in snippet


async def test_fuzzy_finds_a_misspelt_word(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    assert titles(await search(client, alice, "dentsit", "fuzzy"))[0] == "Dentist appointment"
    assert "Quarterly report" in titles(await search(client, alice, "quart", "fuzzy"))


async def test_semantic_and_similar_after_the_embedding_job(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: object
) -> None:
    assert await db_conn.fetchval("SELECT count(*) FROM tasks WHERE embedding IS NULL") == 0  # type: ignore[attr-defined]
    hits = await search(client, alice, "invoices quarterly", "semantic")
    assert titles(hits)[0] == "Invoice for ACME"
    task_id = hits[0]["id"]
    similar = (await client.get(f"/api/tasks/{task_id}/similar", headers=alice)).json()["items"]
    assert task_id not in [hit["id"] for hit in similar]
    assert len(similar) == len(CORPUS) - 1
    assert titles(similar)[0] in {"Weekly planning", "Quarterly report"}


async def test_hybrid_contains_the_best_of_both(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    text_best = titles(await search(client, alice, "budget"))[0]
    vector_best = titles(await search(client, alice, "budget", "semantic"))[0]
    hybrid = titles(await search(client, alice, "budget", "hybrid"))
    assert text_best in hybrid[:3]
    assert vector_best in hybrid[:3]


async def test_editing_a_task_refreshes_its_embedding(
    client: httpx.AsyncClient, alice: dict[str, str], db_conn: object
) -> None:
    [hit] = await search(client, alice, "tomatoes")
    await client.patch(
        f"/api/tasks/{hit['id']}", json={"body": "buy a new lawnmower"}, headers=alice
    )
    stale = await db_conn.fetchval(
        "SELECT embedded_at < updated_at FROM tasks WHERE id = $1", hit["id"]
    )  # type: ignore[attr-defined]
    assert stale is True
    await embed_all(client)
    assert titles(await search(client, alice, "lawnmower", "semantic"))[0] == "Garden"


@pytest.mark.parametrize("mode", ["fulltext", "fuzzy", "semantic", "hybrid"])
async def test_users_only_find_their_own_tasks(
    client: httpx.AsyncClient, alice: dict[str, str], mode: str
) -> None:
    bob = await new_user(client, "bob@example.com")
    assert await search(client, bob, "invoice budget quarterly", mode) == []
    mine = (await client.get("/api/tasks", headers=alice)).json()["items"][0]["id"]
    assert (await client.get(f"/api/tasks/{mine}/similar", headers=bob)).status_code == 404


async def test_full_text_finds_the_users_matches_in_one_index(
    client: httpx.AsyncClient, db_conn: asyncpg.Connection
) -> None:
    """A busy account and a common word: the (user_id, search_vector) GIN index answers
    both conditions at once, instead of a BitmapAnd with a bitmap of all the user's rows."""
    await new_user(client, "busy@example.com")
    await new_user(client, "crowd@example.com")
    busy = await user_id(db_conn, "busy@example.com")
    # 2,000 tasks of the busy account among 20,000; one in a hundred mentions the word.
    await db_conn.execute(
        "INSERT INTO tasks (user_id, title, body) "
        "SELECT CASE WHEN n % 10 = 1 THEN $1 ELSE u.id END, 'chore ' || n, "
        "       CASE WHEN n % 1000 < 10 THEN 'budget' ELSE 'lawn' END "
        "FROM users u, generate_series(1, 20000) AS n WHERE u.email = 'crowd@example.com'",
        busy,
    )
    await db_conn.execute("VACUUM ANALYZE tasks")  # also empties GIN's pending list
    lang = sql.lang_literal("english")
    statement = sql.FULLTEXT.format(lang=lang, snippet=sql.SNIPPET.format(lang=lang))
    rows = await db_conn.fetch("EXPLAIN " + statement, busy, "budget", 20)
    plan = "\n".join(row[0] for row in rows)
    assert "BitmapAnd" not in plan, plan
    assert "tasks_user_search" in plan, plan
    scan = plan.split("Bitmap Index Scan on tasks_user_search")[1]
    assert "user_id = " in scan, plan
    assert "search_vector @@" in scan, plan


@pytest.mark.parametrize(
    "q", ["&|!:*()", "'", '"', "-", "a" * 10_000, "ünïcødé 漢字 🙂", "\\", "%_%", "<>", "OR OR -"]
)
@pytest.mark.parametrize("mode", ["fulltext", "fuzzy", "semantic", "hybrid"])
async def test_hostile_queries_never_fail(
    client: httpx.AsyncClient, alice: dict[str, str], q: str, mode: str
) -> None:
    response = await client.get("/api/search", params={"q": q, "mode": mode}, headers=alice)
    assert response.status_code in (200, 422), response.text


async def test_bad_search_parameters_are_422(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    for params in (
        {"q": ""},
        {"q": "x", "mode": "magic"},
        {"q": "x", "limit": 1000},
        {"q": "a" * 10_001},
    ):
        response = await client.get("/api/search", params=params, headers=alice)
        assert response.status_code == 422


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder()
    first, again = embedder.embed("Quarterly invoice"), embedder.embed("Quarterly invoice")
    assert first == again
    assert len(first) == DIMENSIONS
    assert abs(sum(v * v for v in first) - 1.0) < 1e-9
    assert abs(sum(v * v for v in embedder.embed("")) - 1.0) < 1e-9
