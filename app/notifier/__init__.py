"""One notifier per process: every cross-process wake-up travels on one connection.

Job wake-ups and cancels, cache invalidations and pub/sub events all arrive through the
process's one ``Notifier``: components ``listen(topic, handler)`` and hear each message as
``handler(topic, payload)``; ``on_state(handler)`` tells them when the connection is lost
(``False``: whatever was sent meanwhile is gone for good) and when it is back (``True``:
replay from a table, empty a local cache, poll once). Handlers run on the event loop and
must not block; each is called in its own ``try`` so one failing handler never silences
the others.

Two implementations behind the protocol:

- ``PostgresNotifier`` (``postgres.py``): one LISTEN connection outside every pool (a
  pool's reset would UNLISTEN it), on DATABASE_DIRECT_URL — never through PgBouncer in
  transaction mode, which cannot keep a LISTEN. Without a direct URL behind PgBouncer it
  runs in *polling* mode: never connected, and every component falls back to polling.
- ``RedisNotifier`` (``redis.py``): one Redis subscriber connection, for the Redis cache
  and pub/sub backends.

Build them with ``create_postgres_notifier(connect)`` and ``create_redis_notifier(url)``:
nothing outside this package names a class, so a notifier can be swapped or deleted here.

Both reconnect with one policy (exponential backoff from 50 ms to 5 s, every failure
logged, never giving up) and report the same metrics: ``notifier_connected{backend}``,
``notifier_reconnects_total{backend}``, ``notifier_messages_total{backend}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "Connect",
    "MessageHandler",
    "Notifier",
    "StateHandler",
    "Subscriptions",
    "Unlisten",
    "create_postgres_notifier",
    "create_redis_notifier",
]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, str], None]  # (topic, payload)
StateHandler = Callable[[bool], None]  # connected?
Unlisten = Callable[[], Awaitable[None]]
Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]  # opens a direct connection

CONNECTED = Gauge("notifier_connected", "1 while the notifier's connection is up.", ["backend"])
RECONNECTS = Counter("notifier_reconnects", "Notifier connection re-opened.", ["backend"])
MESSAGES = Counter("notifier_messages", "Messages received by the notifier.", ["backend"])
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 5.0


class Notifier(Protocol):
    """``listen`` returns the function that stops that handler; the topic itself is let go
    (UNLISTEN, UNSUBSCRIBE) when its last handler stops. ``on_state`` returns the function
    that removes the state handler."""

    name: str

    @property
    def connected(self) -> bool: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def listen(self, topic: str, handler: MessageHandler) -> Unlisten: ...
    def on_state(self, handler: StateHandler) -> Callable[[], None]: ...
    def health(self) -> tuple[str, bool]: ...


def create_postgres_notifier(connect: Connect | None) -> Notifier:
    """The LISTEN notifier; ``connect`` opens a direct connection, None means polling mode."""
    from app.notifier.postgres import PostgresNotifier

    return PostgresNotifier(connect)


def create_redis_notifier(url: str) -> Notifier:
    """The Redis subscriber notifier; an unreachable Redis at start is retried, not fatal."""
    from app.notifier.redis import RedisNotifier

    return RedisNotifier(url)


class Subscriptions:
    """Handlers by topic and state handlers: the bookkeeping both notifiers share."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.by_topic: dict[str, list[MessageHandler]] = {}
        self.state_handlers: list[StateHandler] = []
        self._messages = MESSAGES.labels(backend)

    def add(self, topic: str, handler: MessageHandler) -> bool:
        """Register; True when the topic had no handler yet (the caller subscribes)."""
        handlers = self.by_topic.setdefault(topic, [])
        handlers.append(handler)
        return len(handlers) == 1

    def remove(self, topic: str, handler: MessageHandler) -> bool:
        """Unregister; True when the topic has no handler left (the caller unsubscribes)."""
        handlers = self.by_topic.get(topic)
        if handlers is None or handler not in handlers:
            return False
        handlers.remove(handler)
        if handlers:
            return False
        del self.by_topic[topic]
        return True

    def deliver(self, topic: str, payload: str) -> None:
        self._messages.inc()
        for handler in list(self.by_topic.get(topic, ())):
            try:
                handler(topic, payload)
            except Exception:
                log.exception("notifier: handler for %r failed", topic)

    def add_state_handler(self, handler: StateHandler) -> Callable[[], None]:
        self.state_handlers.append(handler)

        def remove() -> None:
            if handler in self.state_handlers:
                self.state_handlers.remove(handler)

        return remove

    def announce_state(self, connected: bool) -> None:
        CONNECTED.labels(self.backend).set(1 if connected else 0)
        for handler in list(self.state_handlers):
            try:
                handler(connected)
            except Exception:
                log.exception("notifier: state handler failed")


def next_delay(delay: float) -> float:
    return min(delay * 2, RECONNECT_MAX_DELAY)
