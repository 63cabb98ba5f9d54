"""Password hashing (argon2id) off the event loop, and the password policy.

Hashing is deliberately slow and memory-hard, so it runs in worker threads, at most
PASSWORD_HASH_CONCURRENCY at a time: memory stays bounded (each hash holds
ARGON2_MEMORY_KIB) and a burst of logins waits at most PASSWORD_HASH_WAIT_SECONDS for a
slot, then gets 503 with Retry-After instead of a queue that grows for seconds.
Defaults follow OWASP's argon2id minimum (19 MiB, 2 iterations, 1 lane).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.config import Settings

T = TypeVar("T")
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common-passwords.txt")
MIN_LENGTH = 10
MAX_LENGTH = 256  # argon2 takes any length; this bounds the work a request can ask for


class HashingBusy(Exception):
    """No hashing slot freed up in time; the caller should answer 503."""


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self._slots = asyncio.Semaphore(settings.password_hash_concurrency)
        self._wait = settings.password_hash_wait_seconds
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self._in_slot(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, new hash if the stored one should be upgraded).

        With ``password_hash=None`` (unknown email) a dummy hash is verified, so the answer
        takes as long as for a real account.
        """
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash("dummy password for unknown accounts")
            await self._in_slot(self._check, self._dummy_hash, password)
            return False, None
        if not await self._in_slot(self._check, password_hash, password):
            return False, None
        if self._hasher.check_needs_rehash(password_hash):
            return True, await self.hash(password)
        return True, None

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _in_slot(self, function: Callable[..., T], *args: str) -> T:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._wait)
        except TimeoutError:
            raise HashingBusy from None
        try:
            return await asyncio.to_thread(function, *args)
        finally:
            self._slots.release()


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text().splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


def policy_problem(password: str) -> str | None:
    """Why ``password`` is refused, or None. Loads the common list on first use."""
    if len(password) < MIN_LENGTH:
        return f"Password must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"Password must be at most {MAX_LENGTH} characters"
    classes = [
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(classes) < 2:
        return "Password must mix at least two of: lower case, upper case, digits, symbols"
    if password.lower() in common_passwords():
        return "Password is too common"
    return None
