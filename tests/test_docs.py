"""The guide runs: every fenced block marked ``runnable`` in README.md and docs/*.md is
executed, and every docs/*.md a file points to exists.

A block opened with ```` ```sh runnable ````, ```` ```sql runnable ```` or
```` ```python runnable ```` runs as a reader would run it after ``scripts/dev``:

- ``sh``: bash (``-euo pipefail``) in the repository root, with DATABASE_URL set to this
  module's database and PGFIRST_URL to a running ``app serve`` on it (OPS_TOKEN is its
  operator token). PATH has no ``uv``: the bootstrap may have installed uv as
  ``python3 -m uv`` only, so commands are written ``.venv/bin/app ...``.
- ``sql``: sent as one simple-query string to the same database (several statements are
  fine; results are not shown).
- ``python``: a fresh interpreter with the same environment; top-level ``await`` and
  ``async with`` work, as in ``python -m asyncio``.

Each block is a test named ``file:line``, so a doc that rots fails with its location.
Blocks share the database in file order; each leaves it usable for the next.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import dsn_for
from tests.helpers import app_process

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh", "sql", "python"}
BLOCK_TIMEOUT = 60
OPS_TOKEN = "docs-ops-token-0123456789abcdef"

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*(.*)$")

# Runs a python block with top-level await allowed (the code arrives on stdin).
PYTHON_RUNNER = """
import ast, asyncio, sys
code = compile(sys.stdin.read(), sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str

    @property
    def location(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Runnable fenced blocks of ``path``, with the line of their opening fence."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, info = opening.groups()
        body: list[str] = []
        start = index + 1
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index].removeprefix(indent))
            index += 1
        index += 1
        words = info.split()
        if "runnable" in words[1:]:
            blocks.append(Block(path, start, words[0], "\n".join(body) + "\n"))
    return blocks


BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]


def test_the_docs_have_runnable_blocks() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.location)
def test_runnable_blocks_name_a_known_language(block: Block) -> None:
    assert block.language in LANGUAGES, f"{block.location}: ```{block.language} runnable"


# A reader that stops at its first match or line closes the pipe while the writer may still
# be writing; under pipefail the writer's failure (curl: "Failed writing body", exit 23)
# fails the block, and only when the output outgrows the pipe's buffer.
EARLY_EXIT_READER = re.compile(r"\|\s*(grep\s+(-\w*[qm]\w*)|head\b)")


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "sh"], ids=lambda block: block.location
)
def test_sh_blocks_do_not_pipe_into_a_reader_that_stops_early(block: Block) -> None:
    assert not EARLY_EXIT_READER.search(block.code), (
        f'{block.location}: read the whole output first (output=$(...); grep -q ... <<<"$output")'
    )


# --- a database and an app for the blocks, one for the module ------------------------------


@pytest.fixture(scope="module")
async def docs_database(
    pg_admin: asyncpg.Connection, pg_admin_dsn: str, template_database: str
) -> AsyncIterator[str]:
    name = f"docs_{uuid.uuid4().hex[:12]}"
    await pg_admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield dsn_for(pg_admin_dsn, name)
    await pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
async def docs_app(docs_database: str) -> AsyncIterator[str]:
    async with app_process(docs_database, OPS_TOKEN=OPS_TOKEN, MAILER="memory") as url:
        yield url


@pytest.fixture(scope="module")
def block_env(docs_database: str, docs_app: str) -> dict[str, str]:
    """The reader's shell after scripts/dev, pointed at this module's database and app."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PGFIRST_")}
    env.pop("ENV", None)
    env.update(
        DATABASE_URL=docs_database,
        PGFIRST_URL=docs_app,
        OPS_TOKEN=OPS_TOKEN,
        LOG_LEVEL="WARNING",
        PATH=os.pathsep.join(
            folder
            for folder in env.get("PATH", "").split(os.pathsep)
            if folder and not (Path(folder) / "uv").exists()
        ),
    )
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.location)
async def test_runnable_block(block: Block, block_env: dict[str, str], docs_database: str) -> None:
    if block.language == "sql":
        conn = await asyncpg.connect(docs_database)
        try:
            await conn.execute(block.code)
        except asyncpg.PostgresError as exc:
            pytest.fail(f"{block.location}: {type(exc).__name__}: {exc}")
        finally:
            await conn.close()
        return
    if block.language == "sh":
        bash = shutil.which("bash") or "/bin/bash"
        args, stdin = [bash, "-euo", "pipefail", "-c", block.code], None
    else:
        args, stdin = [sys.executable, "-c", PYTHON_RUNNER, block.location], block.code
    result = await asyncio.to_thread(
        subprocess.run,
        args,
        input=stdin,
        cwd=ROOT,
        env=block_env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.location} exited {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}"
    )


# --- links --------------------------------------------------------------------------------

# A markdown link to a .md file, and a bare mention of docs/<name>.md anywhere.
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
DOCS_MENTION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
POINTERS = [
    *DOCS,
    *sorted((ROOT / "app").rglob("*.py")),
    *(ROOT / name for name in ("fly.toml", "Dockerfile", "Procfile") if (ROOT / name).exists()),
]


def broken_links(path: Path) -> list[str]:
    text = path.read_text()
    broken = []
    if path.suffix == ".md":
        for target in MARKDOWN_LINK.findall(text):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(target)
    for name in DOCS_MENTION.findall(text):
        if not (ROOT / "docs" / name).exists():
            broken.append(f"docs/{name}")
    return broken


@pytest.mark.parametrize("path", POINTERS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_docs_page_pointed_to_exists(path: Path) -> None:
    assert broken_links(path) == []
