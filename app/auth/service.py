"""Accounts and sessions: the SQL and the rules, with no HTTP in sight.

A session is a refresh-token *family*: login starts one, every refresh replaces the
presented token with a new one in the same family, and presenting an already-used token
revokes the family (someone else holds a copy). Ending sessions:

- ``logout``: the family of the presented access token;
- ``logout_all``, password change and password reset: every family of the user, and
  ``tokens_valid_after`` moves to the present, so outstanding access tokens stop working
  at once.

One clock decides which access tokens a logout-all ends: the app's. A token's ``iat``
comes from it (as its ``exp``, which every app host checks against its own clock anyway),
so ``tokens_valid_after`` is written from it too — never from the database's ``now()``,
whose clock may be seconds away: behind, a token issued just before the logout would
live on; ahead, fresh logins would be refused. Both are kept in whole milliseconds:
``iat`` rounded down, the cut-off set to the next millisecond, so a token issued in the
millisecond of a logout-all counts as issued before it.

What a token's session looks like (user, admin flag, still standing?) is cached for
CACHE_AUTH_TTL_SECONDS (each entry a little less, drawn at random, so that sessions cached
together do not all go back to the database together) under
``auth:<user>:<family>:<generation>``. The user's *session generation* (``auth:gen:<user>``,
a random token) is read first; ending sessions writes a new one, which makes every cached
state of the user unreachable at once — one write, no prefix scan. A reader takes the
generation before it reads the database, so an answer read just before a logout lands
under the old generation and is never served afterwards. A state in steady use is reloaded
in the background before it expires (``get_or_set``), so its readers never wait for it.
"""

from __future__ import annotations

import math
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.auth.mail import SEND_EMAIL_JOB, Message
from app.auth.passwords import Passwords
from app.auth.pruning import GRACE_SECONDS, prune_tokens
from app.auth.tokens import hash_secret, issue_access_token, new_secret
from app.cache import Cache
from app.config import Settings
from app.db import Connection, Database
from app.jobs import Jobs

INSERT_USER = """
INSERT INTO users (email, password_hash, tokens_valid_after) VALUES ($1, $2, $3)
ON CONFLICT (email) DO NOTHING
RETURNING id
"""
USER_BY_EMAIL = "SELECT id, password_hash FROM users WHERE email = $1"
# One query per authenticated request: the user, and whether the session still stands.
USER_FOR_TOKEN = """
SELECT u.id, u.email, u.is_admin, u.email_verified_at, u.created_at,
       -- whole milliseconds, as iat: the cut-off is never earlier than written
       ceil(extract(epoch FROM u.tokens_valid_after) * 1000)::bigint AS valid_after_ms,
       EXISTS (SELECT 1 FROM refresh_tokens r
               WHERE r.family_id = $2 AND r.user_id = u.id AND r.revoked_at IS NULL) AS live
FROM users u
WHERE u.id = $1
"""
UPDATE_PASSWORD_HASH = "UPDATE users SET password_hash = $2 WHERE id = $1"
INSERT_REFRESH = """
INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
VALUES ($1, $2, $3, now() + make_interval(days => $4))
"""
# Claim the presented token: only an unused, unrevoked, unexpired token is claimed, and
# only once even under concurrent requests (the UPDATE's row lock decides).
USE_REFRESH = """
UPDATE refresh_tokens SET used_at = now()
WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
RETURNING user_id, family_id
"""
REVOKE_FAMILY_OF_TOKEN = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)
  AND revoked_at IS NULL
RETURNING user_id
"""
REVOKE_FAMILY = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL
"""
REVOKE_ALL = """
WITH revoked AS (
    UPDATE refresh_tokens SET revoked_at = now()
    WHERE user_id = $1 AND revoked_at IS NULL
)
UPDATE users SET tokens_valid_after = $2 WHERE id = $1
"""
INSERT_ONE_TIME = """
INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at)
VALUES ($1, $2, $3, now() + make_interval(mins => $4))
"""
USE_ONE_TIME = """
UPDATE one_time_tokens SET used_at = now()
WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
RETURNING user_id
"""
SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE id = $1"
# xmax = 0: the row was inserted by this statement, not updated.
UPSERT_ADMIN = """
INSERT INTO users (email, password_hash, is_admin, email_verified_at, tokens_valid_after)
VALUES ($1, $2, true, now(), $3)
ON CONFLICT (email) DO UPDATE SET is_admin = true
RETURNING id, (xmax = 0) AS created
"""
MARK_VERIFIED = """
UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1
"""


@dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    is_admin: bool
    email_verified_at: datetime | None
    created_at: datetime


class Auth:
    """The auth capability of one process: settings, hasher, database, cache, mail queue.

    ``clock`` (Unix seconds) times access tokens and the end of sessions; tests skew it.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        passwords: Passwords,
        cache: Cache,
        jobs: Jobs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.passwords = passwords
        self.cache = cache
        self.jobs = jobs
        self.clock = clock
        self.secret = settings.secret_key.get_secret_value()

    # --- accounts ----------------------------------------------------------------------

    async def signup(self, email: str, password: str) -> int | None:
        """Create the account; None when the email is taken (the caller says the same)."""
        password_hash = await self.passwords.hash(password)
        async with self.db.transaction() as conn:
            user_id: int | None = await conn.fetchval(
                INSERT_USER, email, password_hash, self._cutoff()
            )
            if user_id is None:
                await self._send_email(
                    Message(
                        email,
                        "Someone tried to sign up with your address",
                        "An account already exists for this address. If this was you, "
                        f"log in or reset your password at {self.settings.public_url}.",
                    ),
                    conn=conn,
                )
                return None
            await self._send_verification(conn, user_id, email)
            return user_id

    async def login(self, email: str, password: str) -> Session | None:
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(USER_BY_EMAIL, email)
        ok, upgraded = await self.passwords.verify(row["password_hash"] if row else None, password)
        if not ok or row is None:
            return None
        async with self.db.transaction() as conn:
            if upgraded is not None:
                await conn.execute(UPDATE_PASSWORD_HASH, row["id"], upgraded)
            return await self._start_session(conn, row["id"], uuid.uuid4())

    async def refresh(self, refresh_token: str) -> Session | None:
        token_hash = hash_secret(refresh_token)
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(USE_REFRESH, token_hash)
            if row is not None:
                return await self._start_session(conn, row["user_id"], row["family_id"])
        # Unknown, expired, revoked or reused: if it was ours, its family is compromised.
        async with self.db.acquire() as conn:
            owner = await conn.fetchval(REVOKE_FAMILY_OF_TOKEN, token_hash)
        if owner is not None:
            await self.forget_sessions(owner)
        return None

    async def logout(self, user_id: int, family_id: uuid.UUID) -> None:
        async with self.db.acquire() as conn:
            await conn.execute(REVOKE_FAMILY, family_id, user_id)
        await self.forget_sessions(user_id)

    async def logout_all(self, user_id: int) -> None:
        async with self.db.acquire() as conn:
            await conn.execute(REVOKE_ALL, user_id, self._cutoff())
        await self.forget_sessions(user_id)

    async def change_password(self, user_id: int, current: str, new: str) -> bool:
        async with self.db.acquire() as conn:
            stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
        ok, _ = await self.passwords.verify(stored, current)
        if not ok:
            return False
        new_hash = await self.passwords.hash(new)
        async with self.db.transaction() as conn:
            await conn.execute(SET_PASSWORD, user_id, new_hash)
            await conn.execute(REVOKE_ALL, user_id, self._cutoff())
        await self.forget_sessions(user_id)
        return True

    async def request_password_reset(self, email: str) -> None:
        async with self.db.transaction() as conn:
            user_id = await conn.fetchval("SELECT id FROM users WHERE email = $1", email)
            if user_id is None:
                return
            token, token_hash = new_secret()
            ttl = self.settings.password_reset_ttl_minutes
            await conn.execute(INSERT_ONE_TIME, token_hash, user_id, "password_reset", ttl)
            link = f"{self.settings.public_url}/reset-password#token={token}"
            body = f"Reset your password within {ttl} minutes: {link}\nToken: {token}"
            await self._send_email(Message(email, "Reset your password", body), conn=conn)

    async def confirm_password_reset(self, token: str, password: str) -> bool:
        password_hash = await self.passwords.hash(password)
        async with self.db.transaction() as conn:
            user_id = await conn.fetchval(USE_ONE_TIME, hash_secret(token), "password_reset")
            if user_id is None:
                return False
            await conn.execute(SET_PASSWORD, user_id, password_hash)
            await conn.execute(REVOKE_ALL, user_id, self._cutoff())
            await conn.execute(MARK_VERIFIED, user_id)  # the link proved the address
        await self.forget_sessions(user_id)
        return True

    async def verify_email(self, token: str) -> bool:
        async with self.db.transaction() as conn:
            user_id = await conn.fetchval(USE_ONE_TIME, hash_secret(token), "verify_email")
            if user_id is None:
                return False
            await conn.execute(MARK_VERIFIED, user_id)
        await self.forget_sessions(user_id)
        return True

    async def create_admin(self, email: str, password: str) -> bool:
        """Create an admin account (email verified), or make an existing one an admin with
        its password unchanged; True when the account was created."""
        password_hash = await self.passwords.hash(password)
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(UPSERT_ADMIN, email, password_hash, self._cutoff())
        assert row is not None
        # Sessions cached as non-admin would otherwise linger for CACHE_AUTH_TTL_SECONDS.
        await self.forget_sessions(row["id"])
        return bool(row["created"])

    async def prune_tokens(
        self, *, batch: int = 5_000, grace_seconds: float = GRACE_SECONDS
    ) -> int:
        """Delete refresh and one-time tokens expired over ``grace_seconds`` ago, ``batch``
        rows per statement; the count (``pruning.py`` says why expiry and not use)."""
        return await prune_tokens(self.db, batch=batch, grace_seconds=grace_seconds)

    # --- requests ----------------------------------------------------------------------

    async def user_for_token(
        self, user_id: int, family_id: uuid.UUID, issued_at: float
    ) -> User | None:
        """The user behind a valid access token, or None if its session has ended (the
        cached session state: the module's docstring)."""
        ttl = self.settings.cache_auth_ttl_seconds
        if ttl > 0:
            generation = await self._generation(user_id)
            spread = 1.0 - SESSION_TTL_SPREAD * random.random()  # noqa: S311 - not a secret
            state = await self.cache.get_or_set(
                session_key(user_id, family_id, generation),
                lambda: self._session_state(user_id, family_id),
                ttl=ttl * spread,
                across_processes=False,  # one primary-key read: cheaper than the lock
            )
        else:
            state = await self._session_state(user_id, family_id)
        if state is None:
            return None
        uid, email, is_admin, verified_at, created_at, valid_after, live = state
        if not live or issued_at < valid_after:
            return None
        return User(
            uid,
            email,
            is_admin,
            datetime.fromtimestamp(verified_at, UTC) if verified_at is not None else None,
            datetime.fromtimestamp(created_at, UTC),
        )

    async def _session_state(self, user_id: int, family_id: uuid.UUID) -> list[Any] | None:
        """What user_for_token needs of the database, as cached (None: no such session)."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(USER_FOR_TOKEN, user_id, family_id)
        if row is None:
            return None
        return [
            row["id"],
            row["email"],
            row["is_admin"],
            row["email_verified_at"].timestamp() if row["email_verified_at"] else None,
            row["created_at"].timestamp(),
            row["valid_after_ms"] / 1000,
            row["live"],
        ]

    # --- cached session state ----------------------------------------------------------

    async def forget_sessions(self, user_id: int) -> None:
        """Make every cached session state of ``user_id`` unreachable (after a commit)."""
        if self.settings.cache_auth_ttl_seconds > 0:
            await self.cache.set(
                generation_key(user_id), secrets.token_hex(6), ttl=GENERATION_TTL_SECONDS
            )

    async def _generation(self, user_id: int) -> str:
        current = await self.cache.get(generation_key(user_id))
        if isinstance(current, str):
            return current
        if self.cache.failing:
            # One nothing is stamped with: the database answers. Writing one would only
            # queue more calls on a backend that is not answering.
            return secrets.token_hex(6)
        return await self._new_generation(user_id)

    async def _new_generation(self, user_id: int) -> str:
        """The generation of a user who has none in the cache yet (or lost it)."""
        key = generation_key(user_id)
        fresh = secrets.token_hex(6)
        if await self.cache.add(key, fresh, ttl=GENERATION_TTL_SECONDS):
            return fresh
        # Created meanwhile (or the cache is down: then a generation nothing is stamped
        # with, so nothing stale can be read).
        generation = await self.cache.get(key)
        return generation if isinstance(generation, str) else fresh

    # --- helpers -----------------------------------------------------------------------

    async def _send_email(self, message: Message, *, conn: Connection) -> None:
        """Queue ``message`` in the caller's transaction: no mail about a rolled-back change."""
        await self.jobs.enqueue(SEND_EMAIL_JOB, asdict(message), conn=conn)

    async def _start_session(self, conn: Connection, user_id: int, family: uuid.UUID) -> Session:
        refresh, refresh_hash = new_secret()
        days = self.settings.refresh_token_ttl_days
        await conn.execute(INSERT_REFRESH, user_id, family, refresh_hash, days)
        ttl = self.settings.access_token_ttl_seconds
        access = issue_access_token(self.secret, user_id, family, ttl, now=self.clock())
        return Session(access, refresh, ttl)

    def _cutoff(self) -> datetime:
        """The new ``tokens_valid_after``: the millisecond after this one on ``clock``, so
        every token issued until now, ``iat`` rounded down, falls before it."""
        millis = math.floor(self.clock() * 1000) + 1
        return datetime.fromtimestamp(millis // 1000, UTC) + timedelta(milliseconds=millis % 1000)

    async def _send_verification(self, conn: Connection, user_id: int, email: str) -> None:
        token, token_hash = new_secret()
        hours = self.settings.email_verification_ttl_hours
        await conn.execute(INSERT_ONE_TIME, token_hash, user_id, "verify_email", hours * 60)
        link = f"{self.settings.public_url}/verify-email#token={token}"
        body = f"Confirm your address within {hours} hours: {link}\nToken: {token}"
        await self._send_email(Message(email, "Confirm your email address", body), conn=conn)


# Longer than any cached session state lives; a lost generation only costs cache misses.
GENERATION_TTL_SECONDS = 86_400.0
# A cached session state lives between (1 - this) and 1 times CACHE_AUTH_TTL_SECONDS.
SESSION_TTL_SPREAD = 0.2


def generation_key(user_id: int) -> str:
    return f"auth:gen:{user_id}"


def session_key(user_id: int, family_id: uuid.UUID, generation: str) -> str:
    return f"auth:{user_id}:{family_id}:{generation}"
