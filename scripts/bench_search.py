"""Search at scale: each mode against what you would write without the search module.

    uv run python -m scripts.bench_search --tasks 1000000 --users 1000 --queries 150

Seeds a throwaway embedded PostgreSQL with scripts/seed.py (DATABASE_URL instead when set;
``--no-seed`` then measures the tasks already there), then runs ``--queries`` queries,
``--rounds`` times after one warm-up round; each figure is the median over the rounds of
that round's p50 (or p99), and each ratio the median of the rounds' ratios of p50s.

Queries are drawn the way people type them: users search for what they wrote. Each query
takes a random task of its user and one word of it (80 %) or two (20 %), among the words
of mid to low frequency (not the 99 commonest, stop words included: nobody searches for
"the" or "invoice" in their own notes). Users come in three sizes, a third of the
queries each: small (< 1,000 tasks), medium, and large — the users at or above
SEARCH_EXACT_SCAN_BELOW, whose vector queries go through the HNSW index. For each query:

- full-text (the API's statement: websearch_to_tsquery, GIN, ts_rank_cd, ts_headline)
  against what a user would write without it: ``(title ILIKE '%w%' OR body ILIKE '%w%')``
  for each word, newest first, for the same user;
- fuzzy (trigram) with a typo in the query (two letters swapped);
- semantic, the API's path (exact scan for small users, HNSW for large ones), against the
  exact ``ORDER BY embedding <=> q`` with the same user filter and no vector index, and
  recall@10 of the API's answer against the exact one;
- hybrid (RRF in one statement) against full-text alone;
- similar (another random task of the user), against its exact scan, with recall@10.

And without the user filter, for the first ``--whole-table`` queries: full-text vs ILIKE
over all tasks; HNSW vs the exact scan over all embeddings, for the query's vector
(semantic) and for the task's own vector (similar), with recall@10.

Settings come from the environment as in the app (HNSW_EF_SEARCH,
SEARCH_EXACT_SCAN_BELOW=0 for the index for everybody, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.cache import Cache
from app.config import Settings, load_settings
from app.db import Connection
from app.search import service as sql
from app.search.embedder import HashingEmbedder
from app.services import open_services
from scripts.benchkit import percentile, postgres, quarter_of_memory
from scripts.seed import seed, vocabulary

LANG = sql.lang_literal("english")
# What a user without the search module writes: a substring match per word, newest first.
ILIKE_USER = """
SELECT id, title FROM tasks
WHERE user_id = $1 AND {words}
ORDER BY created_at DESC, id DESC LIMIT 20
"""
ILIKE_ALL = """
SELECT id, title FROM tasks
WHERE {words}
ORDER BY created_at DESC, id DESC LIMIT 20
"""
FULLTEXT_ALL = """
WITH q AS (SELECT websearch_to_tsquery('english'::regconfig, $1) AS tsq)
SELECT t.id, ts_rank_cd(t.search_vector, q.tsq, 32) AS score
FROM tasks t, q WHERE t.search_vector @@ q.tsq
ORDER BY score DESC, t.created_at DESC LIMIT 20
"""
# The exact references: what you write without a vector index. They order by the
# similarity, which no vector index serves, so the planner reads the rows (the user's
# through tasks_user_vectors, or all of them in parallel) and keeps the top 10 in a heap
# sort whatever plan it cached. (Toggling enable_indexscan instead is not safe with
# prepared statements: a generic plan made under one setting is reused under the other.)
EXACT_USER = """
SELECT id, embedding <=> $2 AS distance FROM tasks
WHERE user_id = $1 AND embedding IS NOT NULL
ORDER BY 1 - (embedding <=> $2) DESC LIMIT 10
"""
EXACT_SIMILAR = """
SELECT t.id, t.embedding <=> s.embedding AS distance
FROM tasks s JOIN tasks t ON t.user_id = s.user_id AND t.id <> s.id
WHERE s.id = $1 AND t.embedding IS NOT NULL
ORDER BY 1 - (t.embedding <=> s.embedding) DESC LIMIT 10
"""
EXACT_ALL = """
SELECT id, embedding <=> $1 AS distance FROM tasks
WHERE embedding IS NOT NULL AND id <> $2 ORDER BY 1 - (embedding <=> $1) DESC LIMIT 10
"""
HNSW_ALL = """
SELECT * FROM (
    SELECT id, embedding <=> $1 AS distance FROM tasks
    WHERE embedding IS NOT NULL AND id <> $2 ORDER BY embedding <=> $1 LIMIT 10
) AS nearest ORDER BY distance
"""
MATCHES = """
SELECT count(*) FILTER (WHERE user_id = $1) AS mine, count(*) AS overall
FROM tasks WHERE search_vector @@ websearch_to_tsquery('english'::regconfig, $2)
"""
Call = tuple[str, Callable[[], Awaitable[Any]]]
FIRST_QUERY_RANK = 100  # the 99 commonest words (stop words included) are never queries
TASK_AT = """
SELECT id, title, body, embedding FROM tasks WHERE user_id = $1 ORDER BY id OFFSET $2 LIMIT 1
"""


@dataclass
class Query:
    user_id: int
    size: str
    words: list[str]
    typo: str
    vector: list[float]
    task_id: int
    task_vector: list[float]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def user_sizes(exact_scan_below: int) -> list[tuple[str, int, int | None]]:
    """Small, medium, and large: the users whose vector queries take the HNSW index."""
    large = max(exact_scan_below, 1_001)
    return [("small", 0, 1_000), ("medium", 1_000, large), ("large", large, None)]


def ilike_words(count: int, first_param: int) -> str:
    return " AND ".join(
        f"(title ILIKE ${first_param + i} OR body ILIKE ${first_param + i})" for i in range(count)
    )


def substring(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def swap_two_letters(word: str, rng: random.Random) -> str:
    """A typo: two neighbouring letters swapped, away from the first letter."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


async def make_queries(
    conn: Connection,
    count: int,
    vocabulary_size: int,
    sizes: list[tuple[str, int, int | None]],
    seed: int = 42,
) -> list[Query]:
    """Each query: a user of each size in turn, and one or two words of one of their tasks."""
    rng = random.Random(seed)
    words = vocabulary(vocabulary_size)
    # Words of mid to low frequency that the text search configuration keeps.
    searchable = {
        r["w"]
        for r in await conn.fetch(
            "SELECT w FROM unnest($1::text[]) AS w "
            "WHERE numnode(plainto_tsquery('english'::regconfig, w)) > 0",
            words[FIRST_QUERY_RANK - 1 :],
        )
    }
    owners = await conn.fetch("SELECT user_id, count(*) AS n FROM tasks GROUP BY user_id")
    by_size = {
        name: sorted(
            (r["user_id"], r["n"])
            for r in owners
            if r["n"] >= low and (high is None or r["n"] < high)
        )
        for name, low, high in sizes
    }
    present = [name for name, users in by_size.items() if users]
    embedder = HashingEmbedder()
    queries = []
    for i in range(count):
        size = present[i % len(present)]
        user_id, tasks = rng.choice(by_size[size])
        candidates: list[str] = []
        while not candidates:  # a task of theirs with a word worth searching for
            task = await conn.fetchrow(TASK_AT, user_id, rng.randrange(tasks))
            text = f"{task['title']} {task['body']}".lower().split()
            candidates = [w for w in dict.fromkeys(text) if w in searchable]
        picked = rng.sample(candidates, 2 if rng.random() < 0.2 and len(candidates) > 1 else 1)
        typo = " ".join([swap_two_letters(picked[0], rng), *picked[1:]])
        other = await conn.fetchrow(TASK_AT, user_id, rng.randrange(tasks))
        vector = embedder.embed(" ".join(picked))
        queries.append(Query(user_id, size, picked, typo, vector, other["id"], other["embedding"]))
    return queries


def recall(approx: list[Any], exact: list[Any]) -> float | None:
    """Share of the exact top-k found by the approximate search (None: nothing to find).

    Ties count: a result as close as the exact k-th one is a correct answer (as in
    ann-benchmarks), since which of several equidistant tasks comes back is arbitrary.
    """
    if not exact:
        return None
    kth = distance(exact[-1]) + 1e-9
    found = sum(1 for r in approx if distance(r) <= kth)
    return min(found, len(exact)) / len(exact)


def distance(row: Any) -> float:
    """The API's rows carry a similarity (1 - cosine distance), the references a distance."""
    value = row.get("distance")
    return float(value) if value is not None else 1.0 - float(row["score"])


class Bench:
    def __init__(self, conn: Connection, cache: Cache, settings: Settings) -> None:
        self.conn = conn
        self.cache = cache
        self.settings = settings
        self.times: dict[tuple[str, str], list[float]] = {}
        self.recalls: dict[tuple[str, str], list[float]] = {}
        self.plans: dict[tuple[str, str], int] = {}

    async def timed(self, name: str, size: str, call: Callable[[], Awaitable[Any]]) -> Any:
        began = time.perf_counter()
        result = await call()
        self.times.setdefault((name, size), []).append((time.perf_counter() - began) * 1000)
        return result

    def recall(self, name: str, size: str, approx: list[Any], exact: list[Any]) -> None:
        value = recall(approx, exact)
        if value is not None:
            self.recalls.setdefault((name, size), []).append(value)

    async def pair(self, size: str, first: Call, second: Call, swap: bool) -> list[Any]:
        """Time two queries over the same rows in the order ``swap`` says: whichever runs
        second finds those rows' pages in the CPU caches, so each goes first for half of
        the queries. Returns the results in the order given."""
        results = {}
        for name, call in [second, first] if swap else [first, second]:
            results[name] = await self.timed(name, size, call)
        return [results[first[0]], results[second[0]]]

    async def per_user(self, q: Query) -> None:
        conn, cache, settings, size = self.conn, self.cache, self.settings, q.size
        patterns = [substring(w) for w in q.words]
        swap = q.task_id % 2 == 1
        await self.pair(
            size,
            ("full-text", lambda: sql.search_fulltext(conn, settings, q.user_id, q.text, 20)),
            (
                "ILIKE",
                lambda: conn.fetch(
                    ILIKE_USER.format(words=ilike_words(len(patterns), 2)), q.user_id, *patterns
                ),
            ),
            swap,
        )
        await self.timed(
            "fuzzy", size, lambda: sql.search_fuzzy(conn, settings, q.user_id, q.typo, 20)
        )
        approx, exact = await self.pair(
            size,
            (
                "semantic",
                lambda: sql.search_semantic(conn, cache, settings, q.user_id, q.vector, 10),
            ),
            ("semantic, exact", lambda: conn.fetch(EXACT_USER, q.user_id, q.vector)),
            swap,
        )
        self.recall("semantic", size, approx, exact)
        await self.timed(
            "hybrid",
            size,
            lambda: sql.search_hybrid(conn, cache, settings, q.user_id, q.text, q.vector, 20),
        )
        approx, exact = await self.pair(
            size,
            ("similar", lambda: sql.similar_tasks(conn, cache, settings, q.user_id, q.task_id, 10)),
            ("similar, exact", lambda: conn.fetch(EXACT_SIMILAR, q.task_id)),
            swap,
        )
        self.recall("similar", size, approx, exact)

    async def whole_table(self, q: Query) -> None:
        conn, patterns = self.conn, [substring(w) for w in q.words]
        await self.timed("full-text", "all", lambda: conn.fetch(FULLTEXT_ALL, q.text))
        await self.timed(
            "ILIKE",
            "all",
            lambda: conn.fetch(ILIKE_ALL.format(words=ilike_words(len(patterns), 1)), *patterns),
        )
        for name, vector, task_id in [
            ("semantic", q.vector, 0),
            ("similar", q.task_vector, q.task_id),
        ]:
            approx = await self.timed(name, "all", lambda v=vector, t=task_id: self.hnsw_all(v, t))
            exact = await self.timed(
                f"{name}, exact", "all", lambda v=vector, t=task_id: conn.fetch(EXACT_ALL, v, t)
            )
            self.recall(name, "all", approx, exact)

    async def hnsw_all(self, vector: list[float], task_id: int) -> list[Any]:
        """The nearest tasks of all users through the index, set up as the API does."""
        async with self.conn.transaction():
            await self.conn.execute(sql.USE_HNSW, str(self.settings.hnsw_ef_search))
            return await self.conn.fetch(HNSW_ALL, vector, task_id)


def summarise(rounds: list[Bench]) -> None:
    first = rounds[0]

    def figure(name: str, size: str, q: float) -> float | None:
        values = [percentile(b.times[(name, size)], q) for b in rounds if (name, size) in b.times]
        return statistics.median(values) if values else None

    def ratio(over: str, under: str, size: str) -> float | None:
        values = [
            statistics.median(b.times[(over, size)]) / statistics.median(b.times[(under, size)])
            for b in rounds
            if (over, size) in b.times and (under, size) in b.times
        ]
        return statistics.median(values) if values else None

    columns = ["small", "medium", "large", "all"]
    names = list(dict.fromkeys(name for name, _ in first.times))
    print(f"{'p50 / p99 ms':<18}" + "".join(f"{c:>18}" for c in columns))
    for name in names:
        cells = []
        for size in columns:
            p50, p99 = figure(name, size, 0.5), figure(name, size, 0.99)
            cells.append(f"{p50:.2f} / {p99:.1f}" if p50 is not None and p99 is not None else "")
        print(f"{name:<18}" + "".join(f"{c:>18}" for c in cells))
    print()
    lines = [
        ("ILIKE / full-text", "ILIKE", "full-text"),
        ("exact / semantic", "semantic, exact", "semantic"),
        ("exact / similar", "similar, exact", "similar"),
        ("hybrid / full-text", "hybrid", "full-text"),
    ]
    for label, over, under in lines:
        cells = []
        for size in columns:
            value = ratio(over, under, size)
            cells.append(f"{value:.2f}x" if value is not None else "")
        print(f"{label:<18}" + "".join(f"{c:>18}" for c in cells))
    for name in ("semantic", "similar"):
        cells = []
        for size in columns:
            values = [v for b in rounds for v in b.recalls.get((name, size), [])]
            cells.append(f"{statistics.mean(values):.3f}" if values else "")
        print(f"{'recall@10 ' + name:<18}" + "".join(f"{c:>18}" for c in cells))


async def crossover(dsn: str, sizes: list[int], samples: int = 20, seed: int = 7) -> None:
    """Exact scan vs HNSW for users of about ``sizes`` tasks: where SEARCH_EXACT_SCAN_BELOW
    belongs. Queries: ``similar`` for a task of the user, and ``semantic`` for its title
    (a few words, as typed); p50 of a second pass."""
    settings = load_settings(env="test", database_url=dsn)
    paths = {
        "exact": settings.model_copy(update={"search_exact_scan_below": 10**9}),
        "HNSW": settings.model_copy(update={"search_exact_scan_below": 0}),
    }
    async with open_services(settings, dsn=dsn) as services:
        conn: Connection = await services.db.connect_direct()
        try:
            await crossover_table(conn, services.cache, paths, sizes, samples, seed)
        finally:
            await conn.close()


async def crossover_table(
    conn: Connection,
    cache: Cache,
    paths: dict[str, Settings],
    sizes: list[int],
    samples: int,
    seed: int,
) -> None:
    owners = await conn.fetch("SELECT user_id, count(*) AS n FROM tasks GROUP BY user_id")
    rng, embedder = random.Random(seed), HashingEmbedder()
    print(
        f"{'user tasks':>10}"
        + "".join(f"{f'{q}, {p}':>20}" for q in ("similar", "semantic") for p in paths)
    )
    for size in sizes:
        user = min(owners, key=lambda r: abs(r["n"] - size))
        tasks = [
            await conn.fetchrow(TASK_AT, user["user_id"], rng.randrange(user["n"]))
            for _ in range(samples)
        ]
        columns = [f"{query}, {path}" for query in ("similar", "semantic") for path in paths]
        times: dict[str, list[float]] = {column: [] for column in columns}
        for attempt in range(2):
            for task in tasks:
                vector = embedder.embed(task["title"])
                for path, chosen in paths.items():
                    began = time.perf_counter()
                    await sql.similar_tasks(conn, cache, chosen, user["user_id"], task["id"], 10)
                    middle = time.perf_counter()
                    await sql.search_semantic(conn, cache, chosen, user["user_id"], vector, 10)
                    if attempt:
                        times[f"similar, {path}"].append((middle - began) * 1000)
                        times[f"semantic, {path}"].append((time.perf_counter() - middle) * 1000)
        print(
            f"{user['n']:>10,}" + "".join(f"{statistics.median(times[c]):>20.1f}" for c in columns)
        )


async def run(dsn: str, queries: int, rounds: int, whole_table: int, vocabulary_size: int) -> None:
    settings = load_settings(env="test", database_url=dsn)
    # Open as the app does: the vector paths keep each user's size in the cache.
    async with open_services(settings, dsn=dsn) as services:
        conn: Connection = await services.db.connect_direct()
        total = await conn.fetchval("SELECT count(*) FROM tasks")
        shared_buffers = await conn.fetchval("SHOW shared_buffers")
        users = await conn.fetchval("SELECT count(DISTINCT user_id) FROM tasks")
        sizes = user_sizes(settings.search_exact_scan_below)
        workload = await make_queries(conn, queries, vocabulary_size, sizes)
        matches = [await conn.fetchrow(MATCHES, q.user_id, q.text) for q in workload]
        results = []
        for round_ in range(rounds + 1):
            bench = Bench(conn, services.cache, settings)
            began = time.perf_counter()
            for q in workload:
                await bench.per_user(q)
            for q in workload[:whole_table]:
                await bench.whole_table(q)
            label = "warm-up" if round_ == 0 else f"round {round_}"
            print(f"{label}: {time.perf_counter() - began:.0f} s", flush=True)
            if round_:
                results.append(bench)
        await conn.close()

    counts = {
        f"{name} ({low:,}{f'–{high - 1:,}' if high else '+'} tasks)": sum(
            1 for q in workload if q.size == name
        )
        for name, low, high in sizes
    }
    print(
        f"\nsearch, {total:,} tasks, {users:,} users; {queries} queries per round "
        f"({', '.join(f'{n} {name}' for name, n in counts.items())}), "
        f"{min(whole_table, queries)} over the whole table; median of {rounds} rounds"
    )
    mine, overall = [m["mine"] for m in matches], [m["overall"] for m in matches]
    print(
        f"full-text matches per query: the user's tasks p50 {percentile(mine, 0.5)}, "
        f"p90 {percentile(mine, 0.9)}; whole table p50 {percentile(overall, 0.5)}, "
        f"p90 {percentile(overall, 0.9)}"
    )
    print(
        f"settings: SEARCH_EXACT_SCAN_BELOW={settings.search_exact_scan_below}, "
        f"HNSW_EF_SEARCH={settings.hnsw_ef_search}, shared_buffers={shared_buffers}\n"
    )
    summarise(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--vocabulary", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--whole-table", type=int, default=30)
    parser.add_argument("--no-seed", action="store_true", help="measure the tasks already there")
    parser.add_argument(
        "--crossover",
        type=lambda text: [int(n) for n in text.split(",")],
        help="only time exact vs HNSW for users of about these sizes, e.g. 1000,10000,100000",
    )
    parser.add_argument(
        "--shared-buffers",
        default=quarter_of_memory(),
        help="for the throwaway server (default: a quarter of memory, as on a dedicated "
        "database server; the embedded dev server's 256MB cannot hold a 1M-task table)",
    )
    options = parser.parse_args()
    with postgres(server_settings={"shared_buffers": options.shared_buffers}) as dsn:
        if not options.no_seed:
            asyncio.run(seed(dsn, options.tasks, options.users, options.vocabulary))
        if options.crossover:
            asyncio.run(crossover(dsn, options.crossover))
            return
        asyncio.run(
            run(dsn, options.queries, options.rounds, options.whole_table, options.vocabulary)
        )


if __name__ == "__main__":
    main()
