"""Seed the database in use with users and realistic generated tasks, embedded.

    uv run python -m scripts.seed --tasks 1000000 [--users 1000] [--vocabulary 30000]

The text imitates what people type, with the statistics of real text:

- a vocabulary of ``--vocabulary`` words: English stop words first, then everyday work
  words, then pronounceable pseudo-words generated deterministically ("brintal",
  "quoster"), so a query word matches as many tasks as a real one would, not 15 % of them;
- words drawn by Zipf's law (rank r with probability ~ 1/r, as in natural language): of
  the words drawn from all 30,000, "the" is ~9 %, the 100th word ~0.09 %, the 10,000th
  ~0.001 %; titles (2–6 words) skip the stop words, bodies (8–40 words) do not;
- topics, as real notes have: each user writes about a few of 1,000 topics (a Zipf
  choice among 20 of their own), each topic has its own 300 words, and a title word (80 %)
  or body word (50 %) comes from the task's topic, the rest from the whole vocabulary;
- tasks spread over users by Zipf's law too: with 1,000 users the busiest owns ~10 % of
  all tasks, the median one ~0.03 %, as in any product where a few accounts do most.

Text is generated server-side, in SQL, into an unlogged staging table (a million tasks
in ~15 s here); embeddings are computed with the hashing embedder in two
processes, and the tasks are COPied into ``tasks`` with their embeddings in one pass (an
UPDATE of every row afterwards would leave the table half dead tuples, which would slow
every sequential scan — including the ILIKE the benchmark compares against). The indexes
on embeddings are dropped for the load and built once at the end. ``setseed`` makes the
text the same on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from datetime import UTC, datetime

from app.config import load_settings
from app.db import Connection
from app.db.urls import resolve_database_url
from app.search.embedder import HashingEmbedder
from app.services import open_services


def _split(text: str) -> list[str]:
    return text.split()


# Dropped by the english text search configuration, as in real text; ranks 1..len().
STOP_WORDS = _split(
    "the to and a of for in on with at from by about before after it this that is be up"
)
WORK_WORDS = _split("""
    invoice budget report meeting client review deploy release plan quarterly weekly design
    draft email call schedule contract proposal roadmap hiring interview onboarding payroll
    expense travel booking flight hotel conference slides presentation demo customer support
    ticket bug fix refactor test database backup migration server outage incident postmortem
    security audit compliance policy training workshop newsletter blog article marketing
    campaign launch pricing discount renewal subscription analytics dashboard metrics goal
    target forecast revenue sales lead partner vendor supplier order shipment delivery
    warehouse inventory stock printer laptop office rent lease garden tomatoes groceries
    dentist doctor gym birthday gift party dinner recipe kitchen repair plumber electrician
    car insurance tax return bank loan mortgage savings family school homework project
    deadline friday monday urgent follow prepare send write update finish check confirm
    organise clean book buy
""")
# Pseudo-word syllables: single consonants more often than clusters, as in English.
_ONSETS = _split(
    "b c d f g h k l m n p r s t v w " * 3 + "bl br ch cl cr dr fl fr gl gr pl pr sh sl sp st tr"
)
_VOWELS = _split("a e i o u a e i o u ai ea ee oo ou")
_CODAS = _split("n r s l t m nd nt st ck")


def vocabulary(size: int) -> list[str]:
    """``size`` distinct words, most frequent first: stop words, work words, pseudo-words."""
    words = list(dict.fromkeys(STOP_WORDS + WORK_WORDS))
    seen = set(words)
    rng = random.Random(20261123)
    while len(words) < size:
        syllables = rng.choice((1, 2, 2, 2, 2, 3, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.6:
            word += rng.choice(_CODAS)
        if len(word) >= 4 and word not in seen:
            seen.add(word)
            words.append(word)
    return words[:size]


# Zipf (s = 1) by inverse transform: exp(random() * ln(n + 1)) is log-uniform on
# [1, n + 1), so its floor is rank r with probability ln((r + 1) / r) / ln(n + 1) ~ 1/r.
#
# Topics: each user writes about a few of TOPICS topics (their own Zipf over 20 of them),
# each topic has its own TOPIC_WORDS words (a hash of topic and rank picks them among the
# content words), and a word of a title (80 %) or body (50 %) comes from the task's topic,
# the rest from the whole vocabulary.
#
# Each word is a hash join of drawn ranks against seed_words (subscripting a 30,000-word
# array parameter instead walks the array on every access: 5x slower). The subqueries
# mention g so that they run per row; an uncorrelated one would run once, as an
# InitPlan, and give every task the same text.
TOPICS, TOPIC_WORDS, USER_TOPICS = 1_000, 300, 20
GENERATE = """
INSERT INTO seed_tasks (n, user_id, title, body, created_at)
SELECT g, owner,
       initcap(array_to_string(ARRAY(
           SELECT w.word
           FROM (SELECT CASE WHEN random() < 0.8
                        THEN $4 + 1 + mod(hashint8(topic * 100000
                                 + floor(exp(random() * ln($7 + 1)))::bigint) + 2147483648,
                                 $5 - $4)
                        ELSE $4 + floor(exp(random() * ln($5 - $4 + 1))) END::int AS rank
                 FROM generate_series(1, 2 + (g % 5))) AS drawn
           JOIN seed_words w USING (rank)
       ), ' ')),
       array_to_string(ARRAY(
           SELECT w.word
           FROM (SELECT CASE WHEN random() < 0.5
                        THEN $4 + 1 + mod(hashint8(topic * 100000
                                 + floor(exp(random() * ln($7 + 1)))::bigint) + 2147483648,
                                 $5 - $4)
                        ELSE floor(exp(random() * ln($5 + 1))) END::int AS rank
                 FROM generate_series(1, 8 + (g % 33))) AS drawn
           JOIN seed_words w USING (rank)
       ), ' '),
       now() - make_interval(secs => g)
FROM (
    SELECT g, owner,
           1 + mod(hashint8(owner * 1000 + floor(exp(random() * ln($8 + 1)))::bigint)
                   + 2147483648, $6) AS topic
    FROM (SELECT g, ($3::bigint[])[floor(exp(random() * ln(cardinality($3::bigint[]) + 1)))::int]
                 AS owner
          FROM generate_series($1::bigint, $2::bigint) AS g) AS task
) AS task
"""
BATCH = 20_000
LONG = 4 * 3600  # seconds: bulk statements outlive the app's command timeout


def _embed_chunk(texts: list[str]) -> list[list[float]]:
    model = HashingEmbedder()
    return [model.embed(text) for text in texts]


async def seed(dsn: str, tasks: int, users: int, vocabulary_size: int = 30_000) -> None:
    async with open_services(load_settings(database_url=dsn), dsn=dsn) as services:
        # One connection outside the pools: it changes session settings for the index build.
        conn = await services.db.connect_direct()
        try:
            await fill(conn, tasks, users, vocabulary_size)
        finally:
            await conn.close()


async def fill(conn: Connection, tasks: int, users: int, vocabulary_size: int) -> None:
    words = vocabulary(vocabulary_size)
    began = time.perf_counter()
    user_ids = await conn.fetch(
        """
        INSERT INTO users (email, password_hash)
        SELECT 'seed' || g || '-' || extract(epoch FROM clock_timestamp())::bigint
               || '@example.com', 'x'
        FROM generate_series(1, $1) AS g RETURNING id
        """,
        users,
    )
    ids = [row["id"] for row in user_ids]
    await conn.execute(
        "CREATE UNLOGGED TABLE IF NOT EXISTS seed_tasks (n bigint PRIMARY KEY, "
        "user_id bigint, title text, body text, created_at timestamptz)"
    )
    await conn.execute("TRUNCATE seed_tasks")
    await conn.execute("DROP TABLE IF EXISTS seed_words")
    await conn.execute("CREATE UNLOGGED TABLE seed_words (rank int PRIMARY KEY, word text)")
    await conn.execute(
        "INSERT INTO seed_words SELECT rank, word "
        "FROM unnest($1::text[]) WITH ORDINALITY AS v (word, rank)",
        words,
    )
    await conn.execute("ANALYZE seed_words")
    await conn.execute("SELECT setseed(0.42)")
    step = 100_000
    for low in range(1, tasks + 1, step):
        high = min(tasks, low + step - 1)
        await conn.execute(
            GENERATE,
            low,
            high,
            ids,
            len(STOP_WORDS),
            len(words),
            TOPICS,
            TOPIC_WORDS,
            USER_TOPICS,
            timeout=LONG,
        )
        print(f"  text {high:,}/{tasks:,}", flush=True)
    print(f"text: {time.perf_counter() - began:.0f} s", flush=True)

    began = time.perf_counter()
    # The indexes on embeddings (HNSW, the covering btree) are built once after the load,
    # exactly as the migrations defined them: cheaper than a million inserts into each.
    vector_indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'tasks' AND indexdef LIKE '%embedding%'"
    )
    for index in vector_indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    with multiprocessing.get_context("fork").Pool(2) as pool:
        after = 0
        while True:
            rows = await conn.fetch(
                "SELECT n, user_id, title, body, created_at FROM seed_tasks WHERE n > $1 "
                "ORDER BY n LIMIT $2",
                after,
                BATCH,
            )
            if not rows:
                break
            texts = [f"{row['title']}\n{row['body']}" for row in rows]
            halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
            vectors = [v for part in pool.map(_embed_chunk, halves) for v in part]
            now = datetime.now(UTC)
            await conn.copy_records_to_table(
                "tasks",
                columns=[
                    "user_id",
                    "title",
                    "body",
                    "created_at",
                    "updated_at",
                    "embedding",
                    "embedded_at",
                ],
                records=[
                    (r["user_id"], r["title"], r["body"], r["created_at"], r["created_at"], v, now)
                    for r, v in zip(rows, vectors, strict=True)
                ],
                timeout=LONG,
            )
            after = rows[-1]["n"]
            if after % 100_000 == 0:
                print(f"  tasks {after:,}/{tasks:,}", flush=True)
    await conn.execute("DROP TABLE seed_tasks, seed_words")
    print(f"tasks with embeddings: {time.perf_counter() - began:.0f} s", flush=True)

    began = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '3GB'")
    for index in vector_indexes:
        await conn.execute(index["indexdef"], timeout=LONG)
    print(f"vector indexes: {time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    await conn.execute("VACUUM ANALYZE tasks", timeout=LONG)
    print(f"vacuum: {time.perf_counter() - began:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--vocabulary", type=int, default=30_000)
    options = parser.parse_args()
    dsn = resolve_database_url(load_settings())
    asyncio.run(seed(dsn, options.tasks, options.users, options.vocabulary))


if __name__ == "__main__":
    main()
