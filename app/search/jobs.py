"""The search package's jobs: ``pgfirst.embed_task`` computes a task's embedding."""

from __future__ import annotations

import asyncio

from app.db import Database
from app.jobs import JobKind
from app.search.embedder import Embedder
from app.search.service import SET_EMBEDDING

EMBED_JOB = "pgfirst.embed_task"
GET_TASK_TEXT = "SELECT title, body, updated_at FROM tasks WHERE id = $1"


def search_jobs(db: Database, embedder: Embedder) -> list[JobKind]:
    async def embed_task(task_id: int) -> None:
        async with db.acquire() as conn:
            row = await conn.fetchrow(GET_TASK_TEXT, task_id)
            if row is None:
                return  # deleted meanwhile
            vector = await asyncio.to_thread(embedder.embed, f"{row['title']}\n{row['body']}")
            # Only if the task has not changed since it was read; a newer job follows then.
            await conn.execute(SET_EMBEDDING, task_id, vector, row["updated_at"])

    return [JobKind(EMBED_JOB, embed_task, queue="search", max_attempts=5, timeout=60)]
