"""The SQL of the worker and of the maintenance leader, with the reasons for its shape.

Enqueue, retry and cancel live in ``queue.py`` beside the code that runs them; these are the
statements of the claim loop (claim, complete, fail, heartbeat, release), of the leader's
maintenance (rescue, queue depth, periodic slots) and of the leader lease itself.
"""

from __future__ import annotations

# --- the claim loop ------------------------------------------------------------------------

# The lease half of every claim: the next jobs in claim order, leased to worker $4.
_LEASE = """
UPDATE jobs
SET state = 'running', attempt = attempt + 1,
    locked_until = now() + make_interval(secs => $3), locked_by = $4
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE state = 'available' AND queue = ANY($1::text[]) AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING id, name, args, attempt, max_attempts, request_id, priority, run_at,
          extract(epoch FROM now() - run_at) AS waited
"""
# Successes are counted per worker and second in job_successes (migration 0015), so
# /ops/jobs can say how many finished although their rows are gone. The bookkeeper tallies
# the successes it recorded and hands the tally ({count}) to a statement it sends anyway: a
# claim at most once a second, and every completion (those run when the worker is idle).
# Most claims carry 0 and the insert is skipped; counting every claim instead (an upsert
# per claim) cost 5-8 % of a quick-jobs worker's throughput (docs/benchmarks.md).
_COUNT = """
INSERT INTO job_successes (counted_at, worker, succeeded)
SELECT date_trunc('second', now()), {worker}, {count}::int WHERE {count}::int > 0
ON CONFLICT (counted_at, worker)
DO UPDATE SET succeeded = job_successes.succeeded + excluded.succeeded
"""
# Succeeded jobs are deleted (the default) or kept as 'succeeded' until the retention
# (JOBS_KEEP_SUCCEEDED). Keeping one writes a second row version with its primary-key and
# jobs_finished entries; a delete only marks the row: a worker drains ~24 % more no-op
# jobs per second deleting them (docs/benchmarks.md).
CLAIM = (
    """
WITH finished AS (
    DELETE FROM jobs
    WHERE id = ANY($5::bigint[]) AND locked_by = $4 AND locked_until IS NOT NULL
), counted AS ("""
    + _COUNT.format(worker="$4", count="$6")
    + ")"
    + _LEASE
)
CLAIM_KEEPING = (
    """
WITH finished AS (
    UPDATE jobs
    SET state = 'succeeded', finished_at = now(), locked_until = NULL, locked_by = NULL
    WHERE id = ANY($5::bigint[]) AND locked_by = $4 AND locked_until IS NOT NULL
), counted AS ("""
    + _COUNT.format(worker="$4", count="$6")
    + ")"
    + _LEASE
)
# The claim also records the successes since the last one (`finished`, $5) and, at most
# once a second, counts the recorded ones (`counted`, $6): one statement and one commit per
# batch for both ends. Data-modifying CTEs run to completion even when the main statement
# does not read them; the recorded rows (running) and the claimed ones (available) never
# meet.
# `id = ANY(ARRAY(subquery))` rather than a join to a CTE: the planner then fetches the
# claimed rows by primary key instead of hashing a scan of the whole table (a join's row
# estimate for a LIMIT-ed CTE is poor, and the scan grows with the table). RETURNING comes
# back in primary-key order, so the worker sorts the batch by priority again.

# Set at the start of each transaction of the worker's own writes (docs/jobs.md, "Durability"):
# - synchronous_commit off: the worker's own bookkeeping does not wait for the WAL flush.
#   A server crash can lose the last fraction of a second of claims and completions; such
#   a job is claimed again or rescued when its lease runs out, and runs again — the same
#   at-least-once promise a killed worker already gives. Enqueues stay synchronous.
# - enable_sort and enable_seqscan off: the claim must walk jobs_claim in order and stop
#   after LIMIT rows, and find the rows it updates by primary key. Statistics lag behind a
#   queue: right after a burst of enqueues (before autovacuum's ANALYZE) the planner
#   believes a handful of jobs wait and prefers a bitmap scan plus a sort of *every*
#   waiting job (5-15 ms per claim at 20,000 jobs instead of 0.1 ms), and a plan cached
#   while the table was empty reads the whole table for its `id = ANY(...)` lookups (a
#   worker that started on an empty queue then drained a burst of 200,000 at 1,200 jobs/s
#   instead of 85,000). With both off, the index plans are the only ones left.
BOOKKEEPING_DURABLE = "SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off"
BOOKKEEPING_FAST = BOOKKEEPING_DURABLE + "; SET LOCAL synchronous_commit = off"
# The same for the claim loop's own connection, once per session (``Bookkeeper.claim_connection``),
# plus a generic plan: with those plans pinned the claim's plan does not depend on its
# parameters, yet left alone the server may plan it again on every call (a custom plan for
# these arrays can look cheaper than the generic one) — 0.13 ms of a ~1.2 ms claim of 100,
# ~7 % more claims per second. The connection runs nothing but CLAIM.
CLAIMER_DURABLE = (
    "SET enable_sort = off; SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan"
)
CLAIMER_FAST = CLAIMER_DURABLE + "; SET synchronous_commit = off"

# `locked_by = $2 AND locked_until IS NOT NULL` means "running, leased by this worker" (the
# jobs_lease_iff_running CHECK), without naming `state`: a `state = 'running'` condition
# lets the planner AND the primary-key lookup with a scan of the whole lease index, which
# still holds an entry for every job finished since the last vacuum.
COMPLETE = """
WITH finished AS (
    DELETE FROM jobs
    WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
)""" + _COUNT.format(worker="$2", count="$3")
COMPLETE_KEEPING = """
WITH finished AS (
    UPDATE jobs
    SET state = 'succeeded', finished_at = now(), locked_until = NULL, locked_by = NULL
    WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
)""" + _COUNT.format(worker="$2", count="$3")
# $3 is the backoff the worker computed (jittered); the failure's `at` and the new run_at
# share the statement's now(), so run_at - at is exactly that delay.
FAIL = """
UPDATE jobs SET
    state = (CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END)::job_state,
    run_at = CASE WHEN attempt >= max_attempts THEN run_at
                  ELSE now() + make_interval(secs => $3) END,
    finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
    locked_until = NULL, locked_by = NULL,
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'error', $4::text, 'traceback', $5::text))
WHERE id = $1 AND locked_by = $2 AND locked_until IS NOT NULL
RETURNING state::text
"""
HEARTBEAT = """
UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
RETURNING id
"""
# Shutdown hands unfinished jobs back at once; the attempt they took is given back too.
RELEASE = """
UPDATE jobs
SET state = 'available', run_at = now(), attempt = greatest(attempt - 1, 0),
    locked_until = NULL, locked_by = NULL
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND locked_until IS NOT NULL
"""
WAKE = "SELECT pg_notify($1, $2)"

# --- the maintenance leader ----------------------------------------------------------------

# Take or renew the lease in one statement: the upsert changes the row only when it is this
# process's own or its lease ran out, and RETURNING then yields the holder; a row held by
# someone else is left alone and nothing comes back. Times are the server's, so the
# processes' clocks never have to agree.
TAKE_LEASE = """
INSERT INTO maintenance_leases AS lease (name, holder, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE lease.holder = excluded.holder OR lease.expires_at < now()
RETURNING holder
"""
# A leader that stops gracefully hands over at once instead of after its lease.
GIVE_UP_LEASE = "DELETE FROM maintenance_leases WHERE name = $1 AND holder = $2"

# SKIP LOCKED: a job being finished by its (slow, not dead) worker right now is left alone.
RESCUE = """
UPDATE jobs SET
    state = (CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END)::job_state,
    finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
    run_at = now(), locked_until = NULL, locked_by = NULL,
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'error', 'lease expired; worker ' || locked_by || ' lost'))
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs WHERE state = 'running' AND locked_until < now()
    FOR UPDATE SKIP LOCKED
))
RETURNING id
"""
DEPTH = """
SELECT queue, count(*) AS n FROM jobs
WHERE state = 'available' AND run_at <= now()
GROUP BY queue
"""
# Two statements, not one: an UPDATE cannot see a row inserted by a CTE of its own statement.
SEED_SLOT = """
INSERT INTO job_schedule (name, last_slot) VALUES ($1, '-infinity')
ON CONFLICT (name) DO NOTHING
"""
# The slot is taken for good by whoever moves last_slot forward first: two leaders that
# overlap for a moment (one stalled past its lease) still enqueue each slot once.
CLAIM_SLOT = """
UPDATE job_schedule SET last_slot = $2 WHERE name = $1 AND last_slot < $2
RETURNING name
"""
