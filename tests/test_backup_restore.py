"""The restore drill: `app db backup`, change the data, `app db restore` in place, compare.

Every table is compared by row count and by an md5 over its rows in primary-key order, so
a restore that brings back the right number of wrong rows fails too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from unittest.mock import ANY

import asyncpg

from app.db.backup import backup
from tests.helpers import free_port

# Data of every kind the schema holds: users, projects, tasks with embeddings, activity
# rows spread over the monthly partitions and DEFAULT, events, a job.
ARRANGE = """
INSERT INTO users (email, password_hash)
SELECT format('user%s@example.com', g), 'not-a-real-hash' FROM generate_series(1, 5) g;
INSERT INTO projects (user_id, name) SELECT id, 'inbox' FROM users;
INSERT INTO tasks (user_id, project_id, title, body, embedding)
SELECT p.user_id, p.id, format('task %s of %s', g, p.user_id), 'body text',
       array_fill(g::real / 10, ARRAY[(SELECT atttypmod FROM pg_attribute
                                       WHERE attrelid = 'tasks'::regclass
                                         AND attname = 'embedding')])::vector
FROM projects p, generate_series(1, 4) g;
INSERT INTO activity_logs (user_id, action, created_at)
SELECT u.id, 'task.created', now() - make_interval(days => g * 20)
FROM users u, generate_series(0, 3) g;
INSERT INTO events (channel, payload) VALUES ('tasks', '{"n": 1}');
INSERT INTO jobs (name, args) VALUES ('noop', '{"a": 1}');
"""

# Changes after the backup, each of which the restore must undo.
CHANGE = """
UPDATE tasks SET title = 'changed' WHERE id % 2 = 0;
DELETE FROM activity_logs WHERE action = 'task.created' AND user_id = (SELECT min(id) FROM users);
INSERT INTO users (email, password_hash) VALUES ('late@example.com', 'x');
DELETE FROM events;
CREATE TABLE added_after_backup (id int PRIMARY KEY);
"""


async def test_restore_in_place_brings_every_table_back(database_url: str, tmp_path: Path) -> None:
    assert (await app("activity", "maintain", dsn=database_url))[0] == 0
    await execute(database_url, ARRANGE)
    before = await fingerprint(database_url)
    assert before["activity_logs"][0] == 20
    assert await partitions(database_url) >= 3

    dump = tmp_path / "drill.dump"
    code, stderr = await app("db", "backup", str(dump), dsn=database_url)
    assert code == 0, stderr
    await execute(database_url, CHANGE)
    assert await fingerprint(database_url) != before

    code, stderr = await app("db", "restore", "--yes", str(dump), dsn=database_url)
    assert code == 0, stderr
    assert await fingerprint(database_url) == before


async def test_restore_into_an_empty_database(
    database_url: str, create_database: Callable[..., object], tmp_path: Path
) -> None:
    await execute(database_url, ARRANGE)
    dump = tmp_path / "app.dump"
    await asyncio.to_thread(backup, database_url, dump)
    empty: str = await create_database()  # type: ignore[misc]

    code, stderr = await app("db", "restore", "--yes", str(dump), dsn=empty)

    assert code == 0, stderr
    assert await fingerprint(empty) == await fingerprint(database_url)


async def test_restore_refuses_without_yes(database_url: str, tmp_path: Path) -> None:
    dump = tmp_path / "app.dump"
    await asyncio.to_thread(backup, database_url, dump)
    await execute(database_url, "DELETE FROM alembic_version")

    code, stderr = await app("db", "restore", str(dump), dsn=database_url)

    assert code != 0
    assert "--yes" in stderr
    assert await count(database_url, "alembic_version") == 0


async def test_a_missing_dump_is_one_line_without_traceback(
    database_url: str, tmp_path: Path
) -> None:
    code, stderr = await app("db", "restore", "--yes", str(tmp_path / "nope.dump"))
    assert code == 1
    assert stderr.strip() == f"error: no such dump: {tmp_path / 'nope.dump'}"


async def test_a_file_that_is_not_a_dump_is_refused_and_changes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(b"PGDMP not really a dump")

    code, stderr = await app("db", "restore", "--yes", str(garbage), dsn=database_url)

    assert code == 1
    assert_one_line_error(stderr, "is not a dump made by `app db backup`")
    assert await count(database_url, "alembic_version") == 1


async def test_an_unreachable_database_is_one_line_without_traceback(
    database_url: str, tmp_path: Path
) -> None:
    dump = tmp_path / "app.dump"
    await asyncio.to_thread(backup, database_url, dump)
    nowhere = f"postgresql://nobody@127.0.0.1:{free_port()}/app"

    code, stderr = await app("db", "restore", "--yes", str(dump), dsn=nowhere)

    assert code == 1
    assert_one_line_error(stderr, "Connection refused")


async def test_a_restore_that_fails_half_way_changes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    await execute(database_url, ARRANGE)
    dump = tmp_path / "app.dump"
    await asyncio.to_thread(backup, database_url, dump)
    before = await fingerprint(database_url)
    # The table of contents reads, the data stops short: pg_restore fails mid-stream.
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(dump.read_bytes()[: dump.stat().st_size * 2 // 3])

    code, stderr = await app("db", "restore", "--yes", str(truncated), dsn=database_url)

    assert code == 1
    assert "\n" not in stderr.strip()
    assert await fingerprint(database_url) == before


async def test_backup_and_restore_use_the_direct_url_past_a_pooler(
    database_url: str, tmp_path: Path
) -> None:
    # DATABASE_URL leads nowhere: only DATABASE_DIRECT_URL can have served them.
    pooler = f"postgresql://nobody@127.0.0.1:{free_port()}/app"
    dump = tmp_path / "app.dump"
    direct = {"DATABASE_DIRECT_URL": database_url}

    assert await app("db", "backup", str(dump), dsn=pooler, **direct) == (0, ANY)
    code, stderr = await app("db", "restore", "--yes", str(dump), dsn=pooler, **direct)

    assert code == 0, stderr


# --- helpers -----------------------------------------------------------------------------


def assert_one_line_error(stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith("error: "), stderr
    assert fragment in stderr, stderr


async def app(*args: str, dsn: str | None = None, **extra: str) -> tuple[int, str]:
    """`app <args>` with no terminal on stdin (so `restore` cannot ask); (code, stderr)."""
    env = {**os.environ, "ENV": "test", "COLUMNS": "500", **extra}
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def partitions(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'activity_logs'::regclass"
            )
        )
    finally:
        await conn.close()


# Every ordinary and partitioned table of schema public (partitions are counted through
# their parent), with the columns of its primary key, or all its columns without one.
TABLES = """
SELECT c.oid::regclass::text AS name,
       coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)
                 FROM pg_index i
                 CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary),
                '1') AS key
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
ORDER BY 1
"""


async def fingerprint(dsn: str) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the rows in key order) of every table."""
    conn = await asyncpg.connect(dsn)
    try:
        result: dict[str, tuple[int, str]] = {}
        for table in await conn.fetch(TABLES):
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' "
                f"ORDER BY {table['key']}, t::text), '')) AS digest FROM {table['name']} t"
            )
            assert row is not None
            result[table["name"]] = (row["n"], row["digest"])
        return result
    finally:
        await conn.close()
