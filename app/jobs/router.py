"""/ops/jobs: the queue at a glance, and retry/cancel by id (admin or OPS_TOKEN)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from app.deps import DbConn, JobsDep, OpsAccess
from app.observability.errors import error_responses

router = APIRouter(prefix="/ops/jobs", tags=["ops"])
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]

COUNTS = "SELECT queue, state::text, count(*) AS n FROM jobs GROUP BY queue, state"
OLDEST = """
SELECT queue, extract(epoch FROM now() - min(run_at)) AS age
FROM jobs WHERE state = 'available' AND run_at <= now() GROUP BY queue
"""
# Failures (dead, cancelled) are rows of jobs; successes are counted per worker and second
# in job_successes, within about a second of being recorded (their rows are deleted unless
# JOBS_KEEP_SUCCEEDED, and then not counted twice). Both read by their time index.
THROUGHPUT = """
SELECT (SELECT count(*) FROM jobs
        WHERE finished_at > now() - interval '1 minute' AND state <> 'succeeded')
     + (SELECT coalesce(sum(succeeded), 0) FROM job_successes
        WHERE counted_at > now() - interval '1 minute')
"""
DEAD = """
SELECT id, queue, name, attempt, finished_at, errors -> -1 ->> 'error' AS last_error
FROM jobs WHERE state = 'dead' ORDER BY finished_at DESC LIMIT 20
"""


class DeadJob(BaseModel):
    id: int
    queue: str
    name: str
    attempt: int
    finished_at: datetime
    last_error: str | None


class QueueReport(BaseModel):
    counts: dict[str, dict[str, int]]
    oldest_available_seconds: dict[str, float]
    finished_last_minute: int
    dead: list[DeadJob]


@router.get("", responses=error_responses(403))
async def get_jobs_report(_: OpsAccess, conn: DbConn) -> QueueReport:
    counts: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(COUNTS):
        counts.setdefault(row["queue"], {})[row["state"]] = row["n"]
    oldest = {row["queue"]: float(row["age"]) for row in await conn.fetch(OLDEST)}
    dead: list[Any] = [DeadJob(**dict(row)) for row in await conn.fetch(DEAD)]
    return QueueReport(
        counts=counts,
        oldest_available_seconds=oldest,
        finished_last_minute=await conn.fetchval(THROUGHPUT),
        dead=dead,
    )


@router.post("/{job_id}/retry", status_code=202, responses=error_responses(403, 409))
async def post_job_retry(job_id: JobId, _: OpsAccess, jobs: JobsDep) -> dict[str, int]:
    if not await jobs.retry(job_id):
        raise HTTPException(409, "Only dead or cancelled jobs can be retried")
    return {"id": job_id}


@router.post("/{job_id}/cancel", status_code=202, responses=error_responses(403, 409))
async def post_job_cancel(job_id: JobId, _: OpsAccess, jobs: JobsDep) -> dict[str, int]:
    if not await jobs.cancel(job_id):
        raise HTTPException(409, "Only waiting or running jobs can be cancelled")
    return {"id": job_id}
