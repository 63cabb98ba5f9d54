"""Opaque, tamper-evident keyset cursors.

A cursor is the sort key of the last row a page returned — e.g. ``(created_at, id)`` —
serialised, signed with HMAC-SHA256 under SECRET_KEY and base64url-encoded. Clients pass
it back unchanged; a cursor that was edited, truncated or signed with another key is
refused (``InvalidCursor`` → 400), so a cursor can never be used to read rows the query
would not have reached. Keyset pagination costs the same on page 1,000 as on page 1: the
query seeks in the index instead of counting OFFSET rows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any

import orjson

_SIGNATURE_BYTES = 16
MAX_CURSOR_LENGTH = 512


class InvalidCursor(ValueError):
    """The cursor was not made by this server (or was changed)."""


def encode_cursor(secret: str, *values: Any) -> str:
    payload = orjson.dumps(values)
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(signature + payload).rstrip(b"=").decode()


def decode_cursor(secret: str, token: str) -> list[Any]:
    if len(token) > MAX_CURSOR_LENGTH:
        raise InvalidCursor("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("malformed cursor") from exc
    signature, payload = raw[:_SIGNATURE_BYTES], raw[_SIGNATURE_BYTES:]
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(signature, expected):
        raise InvalidCursor("cursor signature mismatch")
    values = orjson.loads(payload)
    if not isinstance(values, list):
        raise InvalidCursor("malformed cursor")
    return values


def timestamp_cursor(secret: str, created_at: datetime, row_id: int) -> str:
    """The usual (created_at, id) cursor."""
    return encode_cursor(secret, created_at.isoformat(), row_id)


def read_timestamp_cursor(secret: str, token: str) -> tuple[datetime, int]:
    values = decode_cursor(secret, token)
    try:
        created_at, row_id = values
        return datetime.fromisoformat(created_at), int(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("malformed cursor") from exc
