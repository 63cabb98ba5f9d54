"""Which errors the request middleware answers with 503 + Retry-After instead of 500."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions

from app.observability.unavailable import is_unavailable


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the connection is closed"),
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
    ],
)
def test_a_service_that_is_away_is_unavailable(error: Exception) -> None:
    assert is_unavailable(error)


def _save() -> None:
    try:
        raise asyncpg.AdminShutdownError("terminating connection")
    except asyncpg.AdminShutdownError as lost:
        raise RuntimeError("could not save") from lost


def test_an_error_raised_from_a_lost_connection_is_unavailable() -> None:
    with pytest.raises(RuntimeError) as raised:
        _save()
    assert is_unavailable(raised.value)


def test_a_file_error_in_application_code_stays_a_500() -> None:
    with pytest.raises(FileNotFoundError) as raised:
        open("/nonexistent/pgfirst")  # noqa: SIM115 - the error is the point
    assert not is_unavailable(raised.value)


def test_a_connection_used_by_two_tasks_at_once_stays_a_500() -> None:
    error = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    assert not is_unavailable(error)
