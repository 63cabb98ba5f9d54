"""What one request has done to the primary, and the signed WAL position a client carries.

Read routing needs two facts about the request in flight, kept in a context variable so
``Database.acquire(read=True)`` sees them without every caller passing them along:

- ``min_lsn``: the primary's WAL position after this client's last write (from its token);
  a replica serves the client's reads only once it has replayed that far.
- ``primary_only``: the request writes (an unsafe method) or has committed a
  ``db.transaction()``; everything after that in the request reads the primary.

Outside a request (jobs, CLI, the notifier) there is no routing state: ``read=True`` goes to
any healthy replica, and everything else to the primary.

The token is ``<lsn hex>.<expiry hex>.<signature>``, HMAC-SHA256 under SECRET_KEY. Signed
so a client cannot pin its reads to the primary with an invented position; it grants
nothing else, so an old or foreign token is harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# A replica lagging by more than DATABASE_REPLICA_MAX_LAG_SECONDS leaves the rotation, so a
# position older than this has been replayed by every replica still serving reads.
TOKEN_SECONDS = 600
MAX_TOKEN_LENGTH = 128
_SIGNATURE_CHARS = 32


@dataclass(slots=True)
class RequestRouting:
    min_lsn: int | None = None
    primary_only: bool = False
    committed: bool = False


_current: ContextVar[RequestRouting | None] = ContextVar("pgfirst_read_routing", default=None)


def current() -> RequestRouting | None:
    return _current.get()


@contextmanager
def routing_scope(state: RequestRouting) -> Iterator[RequestRouting]:
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)


def note_commit() -> None:
    """A transaction committed on the primary: the rest of the request reads there too."""
    state = _current.get()
    if state is not None:
        state.primary_only = True
        state.committed = True


def sign_position(secret: str, lsn: int, *, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + TOKEN_SECONDS
    body = f"{lsn:x}.{expires:x}"
    return f"{body}.{_signature(secret, body)}"


def read_position(secret: str, token: str, *, now: float | None = None) -> int | None:
    """The LSN in a token this server signed and that has not expired; else None."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    body, _, signature = token.rpartition(".")
    if not hmac.compare_digest(signature.encode(), _signature(secret, body).encode()):
        return None
    lsn_hex, _, expires_hex = body.partition(".")
    try:
        lsn, expires = int(lsn_hex, 16), int(expires_hex, 16)
    except ValueError:
        return None
    if expires < (now if now is not None else time.time()):
        return None
    return lsn


def _signature(secret: str, body: str) -> str:
    digest = hmac.new(secret.encode(), b"pgfirst-lsn:" + body.encode(), hashlib.sha256)
    return digest.hexdigest()[:_SIGNATURE_CHARS]
