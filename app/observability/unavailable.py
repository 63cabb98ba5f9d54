"""Which failures mean "a backing service is away for now" (a 503), not "a bug" (a 500).

PostgreSQL restarting, failing over or refusing connections, a connection killed under a
query, Redis stopped: each passes by itself, and the client should retry rather than report
an error. The request middleware answers them with 503 and Retry-After; everything else
stays a 500.

An ``OSError`` or ``TimeoutError`` counts only when raised inside the database or Redis
driver (a refused or vanished socket, a connect or command timeout), so a file error in
application code is still a 500; asyncpg's interface errors only when they say the
connection is gone.
"""

from __future__ import annotations

from types import TracebackType

import asyncpg
import redis.exceptions

# What a client should wait before retrying: an embedded or managed PostgreSQL restart
# takes one to a few seconds (docs/reliability.md).
RETRY_AFTER_SECONDS = 2

_SERVICE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: terminated by an administrator or a fast shutdown
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or no longer exists
    asyncpg.TooManyConnectionsError,  # 53300
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
_DRIVERS = ("asyncpg", "redis")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, means a service is down."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _SERVICE_DOWN):
            return True
        if isinstance(current, OSError | TimeoutError) and _raised_in_driver(current):
            return True
        if _connection_gone(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _connection_gone(exc: BaseException) -> bool:
    """The driver's own errors on a connection the server ended (a restart, a terminated
    backend): the next use of it fails with a closed connection, or, when the server's
    goodbye arrived while the connection sat idle in the pool, with a protocol state error.
    Other interface errors (a connection used by two tasks at once) are bugs: still 500."""
    if isinstance(exc, asyncpg.InternalClientError):
        return "another operation" in str(exc)
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    return False


def _raised_in_driver(exc: BaseException) -> bool:
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in _DRIVERS:
            return True
        tb = tb.tb_next
    return False
