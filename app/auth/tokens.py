"""Access tokens (signed JWT) and opaque secrets (refresh, reset, verification tokens).

Access tokens are HS256 JWTs signed with SECRET_KEY; decoding pins the algorithm (so
``alg: none`` and algorithm-confusion tokens are refused) and requires exp, iat, sub and
jti. A *stream ticket* is the same token with ``typ: stream`` and a 60-second life, for
EventSource and WebSocket clients, which cannot send an Authorization header.
``iat`` carries milliseconds, rounded down, so that a token issued before a password
change is never taken for one issued after it (``users.tokens_valid_after``, written
from the same clock by ``service.py``). ``fam`` names the refresh-token family of the
session, so logout ends the access token too.

Checking a token's signature and claims with PyJWT takes about 40 µs, a tenth of an
authenticated request's time, and a client sends the same access token with every request
until it expires. So the tokens that passed are remembered, by their exact text and the
secret that verified them (up to VERIFIED_KEPT, oldest out first): presenting the same
string again only re-checks its expiry. A token that failed is never remembered, and
nothing about a token's session is — whether it still stands is checked on every request
(``service.py``).

Every other token is 32 random bytes (``secrets.token_urlsafe``) handed to the client
once; the database keeps only its SHA-256. A leaked database therefore leaks no usable
token — and unlike passwords these have full entropy, so a fast hash is enough.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
VERIFIED_KEPT = 10_000  # ~1 KB each (the token's text and its claims)


class InvalidToken(Exception):
    """Expired, forged, malformed or of the wrong kind."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    family_id: uuid.UUID
    issued_at: float
    token_id: str


def issue_access_token(
    secret: str,
    user_id: int,
    family_id: uuid.UUID,
    ttl: int,
    kind: str = "access",
    *,
    now: float | None = None,
) -> str:
    """A signed token issued at ``now`` (Unix seconds; default: this host's clock)."""
    issued = time.time() if now is None else now
    # Rounding up could date a token issued before a logout-all after it.
    iat = math.floor(issued * 1000) / 1000
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "fam": str(family_id),
        "iat": iat,
        "exp": int(iat) + ttl,
        "jti": uuid.uuid4().hex,
        "typ": kind,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# (token, kind, secret) -> (its claims, its exp): tokens that passed every check.
_verified: dict[tuple[str, str, str], tuple[AccessClaims, float]] = {}
# The clock remembered tokens' expiry is checked on; PyJWT reads this host's too.
_now = time.time


def read_access_token(secret: str, token: str, kind: str = "access") -> AccessClaims:
    key = (token, kind, secret)
    known = _verified.get(key)
    if known is not None:
        claims, expires = known
        # PyJWT's rule, on the same clock (this host's): expired once exp <= now.
        if expires > _now():
            return claims
        _verified.pop(key, None)
        raise InvalidToken("Signature has expired")
    try:
        decoded = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "jti"]},
        )
        if decoded.get("typ") != kind:
            raise InvalidToken(f"not a {kind} token")
        claims = AccessClaims(
            user_id=int(decoded["sub"]),
            family_id=uuid.UUID(str(decoded["fam"])),
            issued_at=float(decoded["iat"]),
            token_id=str(decoded["jti"]),
        )
        expires = float(decoded["exp"])
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise InvalidToken(str(exc)) from None
    if len(_verified) >= VERIFIED_KEPT:
        _verified.pop(next(iter(_verified)), None)
    _verified[key] = (claims, expires)
    return claims


def new_secret() -> tuple[str, bytes]:
    """A fresh opaque token and the hash to store."""
    token = secrets.token_urlsafe(32)
    return token, hash_secret(token)


def hash_secret(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
