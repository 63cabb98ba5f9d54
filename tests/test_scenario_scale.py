"""The scaling scenario in its short form: two app and two worker processes on one primary,
a replica, PgBouncer and Redis; the replica, Redis and a worker taken away mid-run
(scripts/scenario_scale.py says what each phase checks)."""

from __future__ import annotations

from pathlib import Path

from scripts.scenario_scale import run_scenario
from tests.pooler import pgbouncer_installed


async def test_journeys_survive_losing_the_replica_redis_and_a_worker(tmp_path: Path) -> None:
    pgbouncer_installed()
    report = await run_scenario(per_step=1, base=tmp_path / "scale")
    assert report["failed"] == []
    assert report["server_errors"] == 0
    assert report["lost_writes"] == 0
    assert report["lost_jobs"] == 0
    assert report["run_twice_not_rescued"] == 0
    assert report["jobs_rescued"] > 0  # the SIGKILL hit a worker holding jobs
