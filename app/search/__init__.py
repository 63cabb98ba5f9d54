"""Search over tasks in PostgreSQL alone: full-text, typo-tolerant, semantic and hybrid.

Technique (``service.py``): a generated, weighted tsvector with a GIN index and
``websearch_to_tsquery``; pg_trgm on titles; pgvector embeddings with an HNSW index, filled
by a job after each write (``embed_task``), never in the request; reciprocal rank fusion of
text and vector rankings in one SQL statement. Routes: ``GET /api/search`` and
``GET /api/tasks/{id}/similar`` (``router.py``). Embedders in ``embedder.py``.

When to go further: a dedicated search engine pays when ranking needs features Postgres
lacks (per-field boosting at query time, facets over millions of rows, multilingual
stemming in one index) or when search load starts to compete with writes — the read
replicas flag (DATABASE_REPLICA_URLS) comes first, since search reads tolerate lag.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import lru_cache

from app.config import get_settings
from app.db import Connection, get_database
from app.jobs import enqueue, job
from app.search.embedder import Embedder, create_embedder
from app.search.service import ALL_FROM, SET_EMBEDDING, STALE

EMBED_JOB = "pgfirst.embed_task"


@lru_cache(maxsize=1)
def embedder() -> Embedder:
    settings = get_settings()
    return create_embedder(settings.embedder, settings.embedder_model)


async def request_embedding(conn: Connection, task_id: int) -> None:
    """Queue the (re)embedding of a task, in the caller's transaction."""
    await enqueue(EMBED_JOB, {"task_id": task_id}, conn=conn, unique_key=f"embed:{task_id}")


@job(name=EMBED_JOB, queue="search", max_attempts=5, timeout=60)
async def embed_task(task_id: int) -> None:
    db = await get_database()
    async with db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT title, body, updated_at FROM tasks WHERE id = $1", task_id
        )
        if row is None:
            return  # deleted meanwhile
        vector = await asyncio.to_thread(embedder().embed, f"{row['title']}\n{row['body']}")
        # Only if the task has not changed since it was read; a newer job follows then.
        await conn.execute(SET_EMBEDDING, task_id, vector, row["updated_at"])


def _embed_all(model: Embedder, texts: list[str]) -> list[list[float]]:
    return [model.embed(text) for text in texts]


async def reindex(*, everything: bool = False, batch: int = 500) -> int:
    """Embed stale tasks (or all of them); returns how many were embedded."""
    done = 0
    async for count in reindex_batches(everything=everything, batch=batch):
        done += count
    return done


async def reindex_batches(*, everything: bool = False, batch: int = 500) -> AsyncIterator[int]:
    """Embed in batches of ``batch`` (embedder in a thread); yields each batch's size."""
    db = await get_database()
    after = 0
    model = embedder()
    while True:
        async with db.acquire() as conn:
            rows = await conn.fetch(ALL_FROM if everything else STALE, after, batch)
        if not rows:
            return
        texts = [f"{r['title']}\n{r['body']}" for r in rows]
        vectors = await asyncio.to_thread(_embed_all, model, texts)
        async with db.transaction() as conn:
            await conn.executemany(
                SET_EMBEDDING,
                [(r["id"], v, r["updated_at"]) for r, v in zip(rows, vectors, strict=True)],
            )
        after = rows[-1]["id"]
        yield len(rows)
