"""Search at scale: each mode against what you would write without the search module.

    uv run python -m scripts.bench_search [--tasks 1000000] [--users 100] [--queries 100]

Seeds a throwaway embedded PostgreSQL with scripts/seed.py (or uses DATABASE_URL as it
is with --no-seed), then for ``--queries`` random one-word queries of random users:

- full-text (the API's query: websearch_to_tsquery + GIN + ts_rank_cd + headline) vs
  ``ILIKE '%word%'`` on title and body — for one user (as the API searches) and across
  the whole table (where an unindexed ILIKE shows its true cost);
- fuzzy (trigram) p50/p99;
- semantic: HNSW (iterative scan, ef_search 100) vs the exact ``ORDER BY embedding <=> q``
  scan, with recall@10 of HNSW against the exact answer;
- hybrid (RRF, one statement) p50 against full-text alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable
from typing import Any

from app.config import load_settings
from app.db import Connection, Database
from app.search import service as sql
from app.search.embedder import HashingEmbedder
from scripts.benchkit import percentile, postgres
from scripts.seed import WORDS, seed

LANG = sql.lang_literal("english")
ILIKE_USER = """
SELECT id, title FROM tasks
WHERE user_id = $1 AND (title ILIKE '%' || $2 || '%' OR body ILIKE '%' || $2 || '%')
ORDER BY created_at DESC LIMIT 20
"""
ILIKE_ALL = """
SELECT id, title FROM tasks
WHERE title ILIKE '%' || $1 || '%' OR body ILIKE '%' || $1 || '%'
ORDER BY created_at DESC LIMIT 20
"""
FULLTEXT_ALL = """
WITH q AS (SELECT websearch_to_tsquery('english'::regconfig, $1) AS tsq)
SELECT t.id, ts_rank_cd(t.search_vector, q.tsq, 32) AS score
FROM tasks t, q WHERE t.search_vector @@ q.tsq
ORDER BY score DESC, t.created_at DESC LIMIT 20
"""
EXACT = """
SELECT id FROM tasks WHERE user_id = $1 AND embedding IS NOT NULL
ORDER BY embedding <=> $2 LIMIT 10
"""


async def timed(samples: list[float], call: Awaitable[Any]) -> Any:
    began = time.perf_counter()
    result = await call
    samples.append((time.perf_counter() - began) * 1000)
    return result


async def run(dsn: str, queries: int) -> None:
    settings = load_settings(env="test", database_url=dsn)
    db = await Database.connect(settings, dsn)
    conn: Connection = await db.connect_direct()
    users = [r["user_id"] for r in await conn.fetch("SELECT DISTINCT user_id FROM tasks")]
    total = await conn.fetchval("SELECT count(*) FROM tasks")
    rng = random.Random(42)
    embedder = HashingEmbedder()
    snippet = sql.SNIPPET.format(lang=LANG)
    fulltext_sql = sql.FULLTEXT.format(lang=LANG, snippet=snippet)
    hybrid_sql = sql.HYBRID.format(lang=LANG)
    times: dict[str, list[float]] = {}
    recalls: list[float] = []

    async def measure(name: str, query: str, *args: Any) -> Any:
        return await timed(times.setdefault(name, []), conn.fetch(query, *args))

    for _ in range(queries):
        user, word = rng.choice(users), rng.choice(WORDS)
        vector = embedder.embed(word + " " + rng.choice(WORDS))
        await measure("full-text, one user", fulltext_sql, user, word, 20)
        await measure("ILIKE, one user", ILIKE_USER, user, word)
        await measure("full-text, whole table", FULLTEXT_ALL, word)
        await measure("ILIKE, whole table", ILIKE_ALL, word)
        escaped = word
        async with conn.transaction():
            await conn.execute(sql.SET_FUZZY_THRESHOLD, str(settings.search_fuzzy_threshold))
            await measure("fuzzy, one user", sql.FUZZY, user, word[:-1] + "x", 20, escaped)
        async with conn.transaction():
            await sql.use_iterative_scan(conn, settings.hnsw_ef_search)
            approx = await measure("HNSW top 10", sql.SEMANTIC, user, vector, 10)
            await measure("hybrid (RRF)", hybrid_sql, user, word, vector, 40, 1.0, 1.0, 20)
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_indexscan = off")
            await conn.execute("SET LOCAL enable_bitmapscan = off")
            exact = await measure("exact scan top 10", EXACT, user, vector)
        truth = {r["id"] for r in exact}
        if truth:
            recalls.append(len(truth & {r["id"] for r in approx}) / len(truth))
    await conn.close()
    await db.close()

    print(f"search, {total:,} tasks, {len(users)} users, {queries} queries")
    print(f"{'query':<26}{'p50 ms':>10}{'p99 ms':>10}")
    for name, samples in times.items():
        print(f"{name:<26}{percentile(samples, 0.5):>10.2f}{percentile(samples, 0.99):>10.2f}")
    p50 = {name: statistics.median(s) for name, s in times.items()}
    one_user = p50["ILIKE, one user"] / p50["full-text, one user"]
    whole = p50["ILIKE, whole table"] / p50["full-text, whole table"]
    print(f"ILIKE / full-text p50: one user {one_user:.1f}x, whole table {whole:.1f}x")
    print(
        f"exact scan / HNSW p50: {p50['exact scan top 10'] / p50['HNSW top 10']:.1f}x; "
        f"HNSW recall@10: {statistics.mean(recalls):.3f}"
    )
    print(f"hybrid / full-text p50: {p50['hybrid (RRF)'] / p50['full-text, one user']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--queries", type=int, default=100)
    options = parser.parse_args()
    with postgres() as dsn:
        asyncio.run(seed(dsn, options.tasks, options.users))
        asyncio.run(run(dsn, options.queries))


if __name__ == "__main__":
    main()
