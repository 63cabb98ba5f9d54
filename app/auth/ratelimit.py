"""Rate limits for signup, login and password reset: fixed windows, two backends.

``RateLimiter.hit(key, limit, window)`` counts one attempt and says whether it is allowed
and, if not, how long until the window resets (the Retry-After). Chosen once by
RATE_LIMIT_BACKEND:

- ``postgres``: one upsert per hit on an UNLOGGED table (no WAL: counters need no crash
  safety), pruned by ``prune()``;
- ``redis``: INCR + EXPIRE in one round trip on a key per window. While Redis cannot be
  reached, hits are counted by the Postgres limiter instead (logged, and counted in
  ``rate_limit_fallbacks_total``): the limits still hold, and signup and login never fail
  because Redis is down. Counts restart in the other store when it switches.

Flip to redis when rate-limit writes become a noticeable share of the database's writes
(a credential-stuffing attack is exactly that).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import Settings
from app.db import Database

# Count the hit in the current window; a new window restarts the count.
HIT = """
INSERT INTO rate_limits AS r (key, window_start, hits)
VALUES ($1, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1)
ON CONFLICT (key) DO UPDATE
SET hits = CASE WHEN r.window_start = EXCLUDED.window_start THEN r.hits + 1 ELSE 1 END,
    window_start = EXCLUDED.window_start
RETURNING hits, extract(epoch FROM window_start + make_interval(secs => $2) - now())
"""
PRUNE = "DELETE FROM rate_limits WHERE window_start < now() - make_interval(secs => $1)"

log = logging.getLogger(__name__)
FALLBACKS = Counter(
    "rate_limit_fallbacks", "Rate-limit hits counted in Postgres because Redis failed."
)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds until the window resets


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: int) -> Verdict: ...
    async def prune(self, older_than: int) -> int: ...
    async def close(self) -> None: ...


class PostgresRateLimiter:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, key: str, limit: int, window: int) -> Verdict:
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(HIT, key, window)
        assert row is not None
        return Verdict(row[0] <= limit, max(1, int(row[1]) + 1))

    async def prune(self, older_than: int) -> int:
        async with self.db.acquire() as conn:
            status = await conn.execute(PRUNE, older_than)
        return int(status.split()[-1])

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    def __init__(self, redis: Redis, fallback: RateLimiter) -> None:
        self.redis = redis  # the services' client, shared with the other Redis backends
        self.fallback = fallback

    async def hit(self, key: str, limit: int, window: int) -> Verdict:
        try:
            return await self._hit(key, limit, window)
        except (RedisError, OSError) as exc:
            FALLBACKS.inc()
            log.warning("rate limit: Redis failed (%r); counting in Postgres", exc)
            return await self.fallback.hit(key, limit, window)

    async def _hit(self, key: str, limit: int, window: int) -> Verdict:
        now = time.time()
        window_no = int(now // window)
        redis_key = f"pgfirst:rl:{key}:{window_no}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window + 1)
            hits, _ = await pipe.execute()
        retry_after = int((window_no + 1) * window - now) + 1
        return Verdict(int(hits) <= limit, retry_after)

    async def prune(self, older_than: int) -> int:
        # Redis keys expire on their own; what the fallback counted is pruned there.
        return await self.fallback.prune(older_than)

    async def close(self) -> None:
        return None  # the client belongs to the services


def create_rate_limiter(settings: Settings, db: Database, redis: Redis | None) -> RateLimiter:
    """The limiter RATE_LIMIT_BACKEND names (``redis`` needs the services' Redis client)."""
    if settings.rate_limit_backend == "redis":
        if redis is None:
            raise ValueError("RATE_LIMIT_BACKEND=redis needs a Redis client (REDIS_URL)")
        return RedisRateLimiter(redis, fallback=PostgresRateLimiter(db))
    return PostgresRateLimiter(db)


def client_ip(request: Request, trusted_header: str | None) -> str:
    """The client's address: the trusted proxy's header when configured, else the peer.

    The header is expected to hold one address, set by the proxy itself (Fly's
    Fly-Client-IP, which a client cannot pass through Fly's edge). For a comma list (an
    X-Forwarded-For style header) the last entry is taken: the one the trusted proxy
    appended, where every entry before it came from the client and can be forged. A value
    that is not an IP address falls back to the peer address: a rate-limit key is always
    an address, in one canonical spelling.
    """
    if trusted_header:
        value = request.headers.get(trusted_header)
        if value:
            try:
                return str(ipaddress.ip_address(value.split(",")[-1].strip()))
            except ValueError:
                pass
    return request.client.host if request.client else "unknown"
