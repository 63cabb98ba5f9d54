"""`app search reindex`: embeds the tasks that have no (or a stale) embedding; `--all`
embeds every task again."""

from __future__ import annotations

import asyncpg
import pytest

from app.search.embedder import HashingEmbedder
from tests.helpers import run_cli

TASKS = [("Invoice for ACME", "send it friday"), ("Garden", "water the roses"), ("Dentist", "")]
OWN_TEXT = "SELECT coalesce(embedding <=> $2::text::vector < 1e-6, false) FROM tasks WHERE id = $1"
PLACEHOLDER = "[" + ",".join(["1"] + ["0"] * 255) + "]"  # a valid vector no text embeds to


@pytest.fixture
async def owner(db_conn: asyncpg.Connection) -> int:
    return await db_conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO users (email, password_hash) VALUES ('owner@example.com', 'x') RETURNING id"
    )


def as_vector(values: list[float]) -> str:
    return "[" + ",".join(repr(value) for value in values) + "]"


async def embedded_as_the_embedder_would(db_conn: asyncpg.Connection) -> list[bool]:
    """For each task, whether its embedding is its own text's (cosine distance ~ 0)."""
    rows = await db_conn.fetch("SELECT id, title, body FROM tasks ORDER BY id")
    model = HashingEmbedder()
    return [
        await db_conn.fetchval(
            OWN_TEXT,
            row["id"],
            as_vector(model.embed(f"{row['title']}\n{row['body']}")),
        )
        for row in rows
    ]


async def test_reindex_embeds_every_task_that_has_no_embedding(
    database_url: str, db_conn: asyncpg.Connection, owner: int
) -> None:
    await db_conn.executemany(
        "INSERT INTO tasks (user_id, title, body) VALUES ($1, $2, $3)",
        [(owner, title, body) for title, body in TASKS],
    )

    code, stderr = await run_cli("search", "reindex", DATABASE_URL=database_url)

    assert code == 0, stderr
    assert await embedded_as_the_embedder_would(db_conn) == [True] * len(TASKS)


async def test_reindex_all_embeds_again_tasks_whose_embedding_is_current(
    database_url: str, db_conn: asyncpg.Connection, owner: int
) -> None:
    # Embedded after their last change, so not stale: only --all looks at them.
    await db_conn.executemany(
        "INSERT INTO tasks (user_id, title, body, embedding, embedded_at) "
        "VALUES ($1, $2, $3, $4::text::vector, now() + interval '1 second')",
        [(owner, title, body, PLACEHOLDER) for title, body in TASKS],
    )
    code, stderr = await run_cli("search", "reindex", DATABASE_URL=database_url)
    assert code == 0, stderr
    assert await embedded_as_the_embedder_would(db_conn) == [False] * len(TASKS)

    code, stderr = await run_cli("search", "reindex", "--all", DATABASE_URL=database_url)

    assert code == 0, stderr
    assert await embedded_as_the_embedder_would(db_conn) == [True] * len(TASKS)
