"""Access tokens read again: a token that passed once is remembered, and only that token."""

from __future__ import annotations

import time
import uuid

import pytest

from app.auth import tokens
from app.auth.tokens import InvalidToken, issue_access_token, read_access_token
from tests.conftest import TEST_SECRET_KEY


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue_access_token(TEST_SECRET_KEY, 7, uuid.uuid4(), 60)
    assert read_access_token(TEST_SECRET_KEY, token).user_id == 7
    monkeypatch.setattr(tokens, "_now", lambda: time.time() + 61)
    with pytest.raises(InvalidToken):
        read_access_token(TEST_SECRET_KEY, token)


def test_a_remembered_token_is_refused_under_another_secret() -> None:
    token = issue_access_token(TEST_SECRET_KEY, 7, uuid.uuid4(), 60)
    read_access_token(TEST_SECRET_KEY, token)
    with pytest.raises(InvalidToken):
        read_access_token("another-secret-key-that-is-long-enough-0000", token)


def test_a_remembered_access_token_is_not_a_stream_ticket() -> None:
    token = issue_access_token(TEST_SECRET_KEY, 7, uuid.uuid4(), 60)
    read_access_token(TEST_SECRET_KEY, token)
    with pytest.raises(InvalidToken):
        read_access_token(TEST_SECRET_KEY, token, kind="stream")


def test_a_token_altered_after_a_remembered_one_is_refused() -> None:
    token = issue_access_token(TEST_SECRET_KEY, 7, uuid.uuid4(), 60)
    read_access_token(TEST_SECRET_KEY, token)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(InvalidToken):
        read_access_token(TEST_SECRET_KEY, f"{header}.{payload}.{flipped}")


def test_remembered_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_KEPT", 3)
    monkeypatch.setattr(tokens, "_verified", {})
    issued = [issue_access_token(TEST_SECRET_KEY, n, uuid.uuid4(), 60) for n in range(5)]
    for token in issued:
        read_access_token(TEST_SECRET_KEY, token)
    assert [key[0] for key in tokens._verified] == issued[2:]
