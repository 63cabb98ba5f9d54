"""The search queries. Every one filters by the caller's user_id in SQL.

- fulltext: ``websearch_to_tsquery`` (quotes, OR, -exclusion as users type them) against
  the weighted tsvector through its GIN index; ranked by ``ts_rank_cd`` with length
  normalisation (32: rank/(rank+1)), newest first on ties; snippets by ``ts_headline``
  with «» markers on text that is HTML-escaped first, so a snippet is safe to render.
- fuzzy: trigram similarity on titles (pg_trgm GIN), for typos and prefixes.
- semantic and similar: cosine distance. For a caller with fewer than
  SEARCH_EXACT_SCAN_BELOW tasks, an exact scan of their own rows (cheaper than an index
  walk that steps over everybody else's); above, the HNSW index, whose iterative scan keeps
  looking past other users' rows until enough of the caller's are found (nearest_first).
- hybrid: reciprocal rank fusion of the full-text and vector rankings, in ONE statement:
  score = Σ weight / (60 + rank).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.cache import Cache
from app.config import Settings
from app.db import Connection, Record

SNIPPET = """
ts_headline({lang}, replace(replace(replace(t.body, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
            q.tsq, 'StartSel=«,StopSel=»,MaxFragments=2,MaxWords=18,MinWords=6')
"""
FULLTEXT = """
WITH q AS (SELECT websearch_to_tsquery({lang}, $2) AS tsq)
SELECT t.id, t.title, {snippet} AS snippet,
       ts_rank_cd(t.search_vector, q.tsq, 32) AS score
FROM tasks t, q
WHERE t.user_id = $1 AND t.search_vector @@ q.tsq
ORDER BY score DESC, t.created_at DESC, t.id DESC
LIMIT $3
"""
# `<%` (word similarity above pg_trgm.word_similarity_threshold, set per transaction) and
# the prefix ILIKE can both use the trigram GIN index on title.
FUZZY = """
SELECT t.id, t.title, left(t.body, 160) AS snippet,
       word_similarity($2, t.title) AS score
FROM tasks t
WHERE t.user_id = $1 AND ($2 <% t.title OR t.title ILIKE $4 || '%')
ORDER BY score DESC, t.created_at DESC
LIMIT $3
"""
SET_FUZZY_THRESHOLD = "SELECT set_config('pg_trgm.word_similarity_threshold', $1, true)"
# The two orders of nearest tasks (see nearest_first). The HNSW index serves only
# `ORDER BY embedding <=> vector`; ordering by the similarity, 1 - distance, gives the same
# order but keeps the index out, so the planner reads the caller's vectors (an index-only
# scan of tasks_user_vectors) and keeps the top N in a heap sort: an exact answer.
BY_DISTANCE = "t.embedding <=> {vector}"
BY_SIMILARITY = "1 - (t.embedding <=> {vector}) DESC, t.id"
COUNT_UP_TO = "SELECT count(*) FROM (SELECT FROM tasks WHERE user_id = $1 LIMIT $2) AS mine"
# For the index path, per transaction: ef_search candidates per step; relaxed_order lets the
# filtered scan return rows slightly out of distance order (the statements re-sort their
# few rows), which found more of the true neighbours than strict_order at the same cost;
# and no sorts (see nearest_first).
USE_HNSW = """
SELECT set_config('hnsw.ef_search', $1, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('enable_sort', 'off', true)
"""
# The nearest ids first, their titles and snippets after: a projection below the sort
# would cut a snippet from every row the scan reads, not only from the LIMIT kept.
SEMANTIC = """
SELECT t.id, t.title, left(t.body, 160) AS snippet, nearest.score
FROM (
    SELECT t.id, 1 - (t.embedding <=> $2) AS score
    FROM tasks t
    WHERE t.user_id = $1 AND t.embedding IS NOT NULL
    ORDER BY {nearest_first}
    LIMIT $3
) AS nearest
JOIN tasks t ON t.id = nearest.id
ORDER BY nearest.score DESC, t.id
"""
# Each side ranks its own top candidates; the FULL JOIN fuses them; titles and snippets
# are read for the fused top `limit` only.
HYBRID = """
WITH q AS (SELECT websearch_to_tsquery({lang}, $2) AS tsq),
text_hits AS (
    SELECT t.id, row_number() OVER (
               ORDER BY ts_rank_cd(t.search_vector, q.tsq, 32) DESC, t.created_at DESC) AS rank
    FROM tasks t, q
    WHERE t.user_id = $1 AND t.search_vector @@ q.tsq
    ORDER BY rank
    LIMIT $4
),
vector_hits AS (
    SELECT id, row_number() OVER (ORDER BY distance) AS rank
    FROM (
        SELECT t.id, t.embedding <=> $3 AS distance
        FROM tasks t
        WHERE t.user_id = $1 AND t.embedding IS NOT NULL
        ORDER BY {nearest_first}
        LIMIT $4
    ) AS nearest
),
fused AS (
    SELECT coalesce(x.id, v.id) AS id,
           coalesce($5 / (60.0 + x.rank), 0) + coalesce($6 / (60.0 + v.rank), 0) AS score
    FROM text_hits x FULL JOIN vector_hits v ON v.id = x.id
    ORDER BY score DESC, id DESC
    LIMIT $7
)
SELECT t.id, t.title, left(t.body, 160) AS snippet, f.score
FROM fused f JOIN tasks t ON t.id = f.id
ORDER BY f.score DESC, t.id DESC
"""
# The source's vector comes from a scalar subquery (computed once, before the scan), not
# from a join: the index can order by distance to a value, not to a column of another row.
SIMILAR = """
WITH source AS (SELECT embedding FROM tasks WHERE user_id = $1 AND id = $2)
SELECT t.id, t.title, left(t.body, 160) AS snippet, nearest.score
FROM (
    SELECT t.id, 1 - (t.embedding <=> (SELECT embedding FROM source)) AS score
    FROM tasks t
    WHERE t.user_id = $1 AND t.id <> $2 AND t.embedding IS NOT NULL
    ORDER BY {nearest_first}
    LIMIT $3
) AS nearest
JOIN tasks t ON t.id = nearest.id
ORDER BY nearest.score DESC, t.id
"""
OWNS_TASK = "SELECT embedding IS NOT NULL FROM tasks WHERE user_id = $1 AND id = $2"
SET_EMBEDDING = """
UPDATE tasks SET embedding = $2, embedded_at = now()
WHERE id = $1 AND updated_at <= $3
"""
STALE = """
SELECT id, title, body, updated_at FROM tasks
WHERE id > $1 AND (embedded_at IS NULL OR embedded_at < updated_at)
ORDER BY id
LIMIT $2
"""
ALL_FROM = "SELECT id, title, body, updated_at FROM tasks WHERE id > $1 ORDER BY id LIMIT $2"
# $1: every task, or only those STALE would pick.
COUNT_STALE = """
SELECT count(*) FROM tasks
WHERE $1 OR embedded_at IS NULL OR embedded_at < updated_at
"""


def lang_literal(language: str) -> str:
    """The configuration as a regconfig literal (the name is validated by Settings)."""
    return f"'{language}'::regconfig"


async def search_fulltext(
    conn: Connection, settings: Settings, user_id: int, query: str, limit: int
) -> list[Record]:
    lang = lang_literal(settings.search_language)
    statement = FULLTEXT.format(lang=lang, snippet=SNIPPET.format(lang=lang))
    return await conn.fetch(statement, user_id, query, limit)


async def search_fuzzy(
    conn: Connection, settings: Settings, user_id: int, query: str, limit: int
) -> list[Record]:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    async with conn.transaction():
        await conn.execute(SET_FUZZY_THRESHOLD, str(settings.search_fuzzy_threshold))
        return await conn.fetch(FUZZY, user_id, query, limit, escaped)


async def search_semantic(
    conn: Connection,
    cache: Cache,
    settings: Settings,
    user_id: int,
    vector: list[float],
    limit: int,
) -> list[Record]:
    async with nearest_first(conn, cache, settings, user_id, "$2") as order:
        return await conn.fetch(SEMANTIC.format(nearest_first=order), user_id, vector, limit)


async def search_hybrid(
    conn: Connection,
    cache: Cache,
    settings: Settings,
    user_id: int,
    query: str,
    vector: list[float],
    limit: int,
    *,
    text_weight: float = 1.0,
    vector_weight: float = 1.0,
) -> list[Record]:
    lang = lang_literal(settings.search_language)
    # Its vector half wants 40+ candidates: a filtered index walk costs more per candidate,
    # the exact scan the same for any number, so it keeps the exact path longer.
    threshold = settings.search_hybrid_exact_scan_below
    async with nearest_first(conn, cache, settings, user_id, "$3", exact_below=threshold) as order:
        return await conn.fetch(
            HYBRID.format(lang=lang, nearest_first=order),
            user_id,
            query,
            vector,
            max(limit * 2, 40),
            text_weight,
            vector_weight,
            limit,
        )


async def similar_tasks(
    conn: Connection, cache: Cache, settings: Settings, user_id: int, task_id: int, limit: int
) -> list[Record]:
    source = "(SELECT embedding FROM source)"
    async with nearest_first(conn, cache, settings, user_id, source) as order:
        return await conn.fetch(SIMILAR.format(nearest_first=order), user_id, task_id, limit)


@asynccontextmanager
async def nearest_first(
    conn: Connection,
    cache: Cache,
    settings: Settings,
    user_id: int,
    vector: str,
    *,
    exact_below: int | None = None,
) -> AsyncIterator[str]:
    """The ORDER BY that finds the caller's nearest tasks: exact, or through HNSW.

    Below ``exact_below`` (default ``search_exact_scan_below``) tasks, reading all of the
    caller's vectors and sorting them is exact, and cheaper than an HNSW scan that steps
    over everybody else's rows (measured crossover: docs/search.md); above it, the index
    (``takes_index``). The index path runs in a transaction, for its per-transaction
    settings; the exact path needs none.
    """
    threshold = settings.search_exact_scan_below if exact_below is None else exact_below
    if not await takes_index(conn, cache, settings, user_id, threshold):
        yield BY_SIMILARITY.format(vector=vector)
        return
    async with conn.transaction():
        # enable_sort off: the planner estimates a user's rows from statistics, and a
        # generic plan (prepared statements) from the average user, so it may choose "read
        # the user's rows and sort" for a user known here to be large. With sorts
        # disabled, walking the HNSW index in distance order is the plan left.
        await conn.execute(USE_HNSW, str(settings.hnsw_ef_search))
        yield BY_DISTANCE.format(vector=vector)


def size_key(threshold: int, user_id: int) -> str:
    """The cache key of ``takes_index``'s answer (a new threshold asks anew)."""
    return f"search:large:{threshold}:{user_id}"


async def takes_index(
    conn: Connection,
    cache: Cache,
    settings: Settings,
    user_id: int,
    threshold: int | None = None,
) -> bool:
    """Whether the caller has at least ``threshold`` (``search_exact_scan_below``) tasks.

    Counting stops at the threshold (an index-only scan of at most that many entries), but
    that is still up to a millisecond for a large account, on every vector query; the
    answer is kept in ``cache`` for SEARCH_SIZE_CACHE_SECONDS (a user crossing the
    threshold switches paths that much later: both paths answer correctly, only their cost
    differs).
    """
    if threshold is None:
        threshold = settings.search_exact_scan_below
    if not threshold:
        return True
    key = size_key(threshold, user_id)
    known = await cache.get(key)
    if isinstance(known, bool):
        return known
    large = bool(await conn.fetchval(COUNT_UP_TO, user_id, threshold) >= threshold)
    await cache.set(key, large, ttl=settings.search_size_cache_seconds)
    return large


def rows_out(rows: list[Any]) -> list[dict[str, Any]]:
    return [
        {"id": r["id"], "title": r["title"], "snippet": r["snippet"], "score": float(r["score"])}
        for r in rows
    ]
