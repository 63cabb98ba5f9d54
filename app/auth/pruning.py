"""Pruning spent tokens: refresh and one-time tokens go a day after they expire.

Every login and every refresh adds a ``refresh_tokens`` row, every reset or verification
mail a ``one_time_tokens`` row, and nothing else ever deletes them. A token is kept until
it expires even when it is used or revoked, because until then it can still be presented
and its row decides the answer:

- a *used* refresh token presented again is a stolen copy, and revokes its family — the
  session the thief would otherwise ride on; deleted early, the replay would only be
  refused as unknown and the family would live on;
- a *revoked* refresh token presented again revokes whatever of its family still stands
  (a refresh racing the revocation can leave one live token behind);
- a used one-time token is refused like an unknown one, but expires within hours
  (PASSWORD_RESET_TTL_MINUTES, EMAIL_VERIFICATION_TTL_HOURS), so expiry alone serves both.

After expiry every token is refused whatever its row says. A day of grace keeps recent
rows for whoever asks "why was I logged out?". ``expires_at`` and the cut-off both come
from the database's clock.

Each statement deletes at most ``batch`` rows found through the ``expires_at`` index
(migration 0013) and commits on its own: a backlog is worked off in short transactions
that hold few locks and spread their WAL, rather than in one long delete. The hourly
``pgfirst.prune_tokens`` job (``jobs.py``) runs it.
"""

from __future__ import annotations

from app.db import Database

GRACE_SECONDS = 86_400.0

# `= ANY(ARRAY(subquery))` makes the planner fetch the ids first, through the expiry
# index, then delete by primary key; LIMIT bounds the work of one statement.
PRUNE_REFRESH = """
DELETE FROM refresh_tokens
WHERE id = ANY(ARRAY(
    SELECT id FROM refresh_tokens
    WHERE expires_at < now() - make_interval(secs => $1)
    ORDER BY expires_at
    LIMIT $2
))
"""
PRUNE_ONE_TIME = """
DELETE FROM one_time_tokens
WHERE token_hash = ANY(ARRAY(
    SELECT token_hash FROM one_time_tokens
    WHERE expires_at < now() - make_interval(secs => $1)
    ORDER BY expires_at
    LIMIT $2
))
"""


async def prune_tokens(
    db: Database, *, batch: int = 5_000, grace_seconds: float = GRACE_SECONDS
) -> int:
    """Delete refresh and one-time tokens expired over ``grace_seconds`` ago; the count."""
    deleted = 0
    for statement in (PRUNE_REFRESH, PRUNE_ONE_TIME):
        while True:
            async with db.acquire() as conn:
                status = await conn.execute(statement, grace_seconds, batch)
            count = int(status.split()[-1])
            deleted += count
            if count < batch:
                break
    return deleted
