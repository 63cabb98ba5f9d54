"""Caching of the task and project reads: one data version per user.

Every write to a user's tasks or projects gives that user a new random *data version*
(``tasks:ver:<user>``), after its transaction commits. Reads use the version twice:

- as the ETag (with the query string), so ``If-None-Match`` is answered 304 straight from
  the cache — no query at all;
- in the key of the cached list page (``tasks:list:<user>:<version>:<query hash>``), so a
  write makes every cached page of that user unreachable at once; the old pages expire
  on their own (CACHE_LIST_TTL_SECONDS).

Order matters and is what keeps this correct: a reader takes the version *before* it
reads the database, and a writer replaces it *after* its commit, so a page is never
stored under a version newer than its data. A missing version is created with ``add``
(set-if-absent), never ``set``, for the same reason. Across instances, a new version
reaches another process's L1 within the invalidation delay (about a millisecond; see
docs/cache.md), which bounds how stale a page can be.

A random version (not a counter) never repeats, even after the cache lost it.
"""

from __future__ import annotations

import hashlib
import secrets

from app.cache import Cache
from app.db import Connection, Database

VERSION_TTL_SECONDS = 86_400.0


def version_key(user_id: int) -> str:
    return f"tasks:ver:{user_id}"


def list_key(user_id: int, version: str, kind: str, query: str) -> str:
    digest = hashlib.blake2b(query.encode(), digest_size=10).hexdigest()
    return f"tasks:list:{user_id}:{version}:{kind}:{digest}"


async def data_version(cache: Cache, user_id: int) -> str:
    """The user's current data version (created when absent)."""
    key = version_key(user_id)
    version = await cache.get(key)
    if isinstance(version, str):
        return version
    fresh = secrets.token_hex(6)
    if await cache.add(key, fresh, ttl=VERSION_TTL_SECONDS):
        return fresh
    # Someone else created it first (or the cache is unavailable: then a version that
    # matches nothing, so nothing stale can be served).
    version = await cache.get(key)
    return version if isinstance(version, str) else fresh


async def data_changed(db: Database, cache: Cache, conn: Connection, user_id: int) -> None:
    """Give ``user_id`` a new data version once ``conn``'s transaction commits."""

    async def renew() -> None:
        await cache.set(version_key(user_id), secrets.token_hex(6), ttl=VERSION_TTL_SECONDS)

    if not db.after_commit(conn, renew):
        await renew()
