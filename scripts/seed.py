"""Seed the database in use with users and realistic generated tasks, embedded.

    uv run python -m scripts.seed --tasks 100000 [--users 100]

Text is generated server-side from a vocabulary of everyday work words (titles of 2–6
words, bodies of 8–40), so a million rows take a minute, not an hour. Embeddings are
computed with the configured embedder in two processes and written through COPY into a
temporary table, then one UPDATE; the HNSW index is dropped for the load and rebuilt
once at the end (far faster than maintaining it row by row).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

from app.config import get_settings
from app.db import Database
from app.db.urls import resolve_database_url
from app.search.embedder import HashingEmbedder

WORDS = [
    "invoice",
    "budget",
    "report",
    "meeting",
    "client",
    "review",
    "deploy",
    "release",
    "plan",
    "quarterly",
    "weekly",
    "design",
    "draft",
    "email",
    "call",
    "schedule",
    "contract",
    "proposal",
    "roadmap",
    "hiring",
    "interview",
    "onboarding",
    "payroll",
    "expense",
    "travel",
    "booking",
    "flight",
    "hotel",
    "conference",
    "slides",
    "presentation",
    "demo",
    "customer",
    "support",
    "ticket",
    "bug",
    "fix",
    "refactor",
    "test",
    "database",
    "backup",
    "migration",
    "server",
    "outage",
    "incident",
    "postmortem",
    "security",
    "audit",
    "compliance",
    "policy",
    "training",
    "workshop",
    "newsletter",
    "blog",
    "article",
    "marketing",
    "campaign",
    "launch",
    "pricing",
    "discount",
    "renewal",
    "subscription",
    "analytics",
    "dashboard",
    "metrics",
    "goal",
    "target",
    "forecast",
    "revenue",
    "sales",
    "lead",
    "partner",
    "vendor",
    "supplier",
    "order",
    "shipment",
    "delivery",
    "warehouse",
    "inventory",
    "stock",
    "printer",
    "laptop",
    "office",
    "rent",
    "lease",
    "garden",
    "tomatoes",
    "groceries",
    "dentist",
    "doctor",
    "gym",
    "birthday",
    "gift",
    "party",
    "dinner",
    "recipe",
    "kitchen",
    "repair",
    "plumber",
    "electrician",
    "car",
    "insurance",
    "tax",
    "return",
    "bank",
    "loan",
    "mortgage",
    "savings",
    "family",
    "school",
    "homework",
    "project",
    "deadline",
    "friday",
    "monday",
    "urgent",
    "follow",
    "up",
    "prepare",
    "send",
    "write",
    "update",
    "finish",
    "check",
    "confirm",
    "organise",
    "clean",
    "book",
    "buy",
]

GENERATE = """
INSERT INTO tasks (user_id, title, body, created_at, updated_at)
SELECT u,
       initcap(array_to_string(ARRAY(
           SELECT ($3::text[])[1 + floor(random() * $4)::int] FROM generate_series(1, 2 + (g % 5))
       ), ' ')),
       array_to_string(ARRAY(
           SELECT ($3::text[])[1 + floor(random() * $4)::int] FROM generate_series(1, 8 + (g % 33))
       ), ' '),
       now() - make_interval(secs => g),
       now() - make_interval(secs => g)
FROM generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT ($5::bigint[])[1 + (g % array_length($5::bigint[], 1))::int] AS u) AS owner
"""


LONG = 4 * 3600  # seconds: bulk statements outlive the app's command timeout


def _embed_chunk(texts: list[str]) -> list[list[float]]:
    model = HashingEmbedder()
    return [model.embed(text) for text in texts]


async def seed(dsn: str, tasks: int, users: int) -> None:
    settings = get_settings()
    db = await Database.connect(settings, dsn)
    conn = await db.connect_direct()
    began = time.perf_counter()
    user_ids = await conn.fetch(
        """
        INSERT INTO users (email, password_hash)
        SELECT 'seed' || g || '-' || extract(epoch FROM now())::bigint || '@example.com', 'x'
        FROM generate_series(1, $1) AS g RETURNING id
        """,
        users,
    )
    ids = [row["id"] for row in user_ids]
    first_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM tasks")
    await conn.execute("DROP INDEX IF EXISTS tasks_embedding")
    step = 100_000
    for low in range(1, tasks + 1, step):
        high = min(tasks, low + step - 1)
        await conn.execute(GENERATE, low, high, WORDS, len(WORDS), ids, timeout=LONG)
        print(f"  tasks {high:,}/{tasks:,}", flush=True)
    print(f"text: {time.perf_counter() - began:.0f} s", flush=True)

    began = time.perf_counter()
    await conn.execute("CREATE TEMP TABLE seed_vectors (id bigint, embedding vector(256))")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        after = first_id
        while True:
            rows = await conn.fetch(
                "SELECT id, title || E'\\n' || body AS text FROM tasks WHERE id > $1 "
                "ORDER BY id LIMIT 20000",
                after,
            )
            if not rows:
                break
            texts = [row["text"] for row in rows]
            halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
            vectors = [v for part in pool.map(_embed_chunk, halves) for v in part]
            await conn.copy_records_to_table(
                "seed_vectors",
                records=[(row["id"], v) for row, v in zip(rows, vectors, strict=True)],
            )
            after = rows[-1]["id"]
    await conn.execute(
        "UPDATE tasks t SET embedding = s.embedding, embedded_at = now() "
        "FROM seed_vectors s WHERE t.id = s.id",
        timeout=LONG,
    )
    print(f"embeddings: {time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute(
        "CREATE INDEX tasks_embedding ON tasks USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)",
        timeout=LONG,
    )
    await conn.execute("VACUUM ANALYZE tasks", timeout=LONG)
    print(f"HNSW index + vacuum: {time.perf_counter() - began:.0f} s", flush=True)
    await conn.close()
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100)
    options = parser.parse_args()
    dsn = resolve_database_url(get_settings())
    asyncio.run(seed(dsn, options.tasks, options.users))


if __name__ == "__main__":
    main()
