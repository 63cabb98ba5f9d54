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

from app.config import Settings
from app.db import Connection, Database
from app.jobs import Jobs
from app.search.embedder import Embedder, create_embedder
from app.search.jobs import EMBED_JOB
from app.search.service import ALL_FROM, COUNT_STALE, SET_EMBEDDING, STALE

__all__ = ["EMBED_JOB", "embedder", "reindex", "reindex_batches", "request_embedding"]


def embedder(settings: Settings) -> Embedder:
    """The embedder EMBEDDER names (a model is loaded once per process)."""
    return _embedder(settings.embedder, settings.embedder_model)


@lru_cache(maxsize=4)
def _embedder(kind: str, model: str) -> Embedder:
    return create_embedder(kind, model)


async def request_embedding(jobs: Jobs, conn: Connection, task_id: int) -> None:
    """Queue the (re)embedding of a task, in the caller's transaction."""
    await jobs.enqueue(EMBED_JOB, {"task_id": task_id}, conn=conn, unique_key=f"embed:{task_id}")


def _embed_all(model: Embedder, texts: list[str]) -> list[list[float]]:
    return [model.embed(text) for text in texts]


async def count_to_embed(db: Database, *, everything: bool = False) -> int:
    """How many tasks ``reindex`` would embed."""
    async with db.acquire() as conn:
        return int(await conn.fetchval(COUNT_STALE, everything))


async def reindex(
    db: Database, model: Embedder, *, everything: bool = False, batch: int = 500
) -> int:
    """Embed stale tasks (or all of them); returns how many were embedded."""
    done = 0
    async for count in reindex_batches(db, model, everything=everything, batch=batch):
        done += count
    return done


async def reindex_batches(
    db: Database, model: Embedder, *, everything: bool = False, batch: int = 500
) -> AsyncIterator[int]:
    """Embed in batches of ``batch`` (embedder in a thread); yields each batch's size."""
    after = 0
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
