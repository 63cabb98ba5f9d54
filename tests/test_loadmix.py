"""scripts/loadmix.py in its smallest form: it runs end to end and a trivial load has no error.

The figures themselves belong in docs/load.md; this only keeps the script from rotting.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


async def test_loadmix_at_a_trivial_rate_answers_every_request(
    database_url: str, tmp_path: Path
) -> None:
    report = tmp_path / "loadmix.json"
    arguments = "--users 8 --api-users 1 --tasks-each 6 --rates 8 --duration 3 --sse 2"
    arguments += " --generators 1 --report-seconds 1"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.loadmix",
        *arguments.split(),
        *("--json", str(report)),
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-3000:]

    (phase,) = json.loads(report.read_text())["phases"]
    assert phase["total"]["requests"] > 0
    assert phase["total"]["errors"] == 0, phase["routes"]
    assert phase["tasks_created_missing"] == 0
    assert phase["sse_events_received"] == phase["sse_events_expected"]
