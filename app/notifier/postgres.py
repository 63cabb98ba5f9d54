"""The Postgres notifier: one LISTEN connection carrying every topic of the process.

Topics are NOTIFY channel names. The connection LISTENs to a topic while at least one
handler wants it. asyncpg calls back on the event loop for each notification; the
connection stays idle between them, since a connection busy with a query receives
nothing until it is done.

A termination (server restart, ``pg_terminate_backend``, a cut network) is noticed through
asyncpg's termination callback: state handlers hear ``False`` at once, and a supervisor
reconnects with backoff, LISTENs to every topic again and then announces ``True``.
Notifications sent while it was away are lost — PostgreSQL never replays them — which is
why every component treats ``True`` as "catch up".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from app.notifier import (
    RECONNECT_FIRST_DELAY,
    RECONNECTS,
    Connect,
    MessageHandler,
    StateHandler,
    Subscriptions,
    Unlisten,
    next_delay,
)

log = logging.getLogger(__name__)
# How often the supervisor also checks the connection itself, beside asyncpg's callback.
WATCH_SECONDS = 5.0


class PostgresNotifier:
    """``connect`` opens a direct connection; None means polling mode (no LISTEN at all)."""

    name = "postgres"

    def __init__(self, connect: Connect | None) -> None:
        self._connect = connect
        self._subscriptions = Subscriptions("postgres")
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()  # one LISTEN/UNLISTEN/reconnect at a time
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def polling(self) -> bool:
        return self._connect is None

    async def start(self) -> None:
        if self._connect is None:
            log.info("notifier: no direct database URL behind the pooler; components poll")
            self._subscriptions.announce_state(False)
            return
        try:
            await self._open()
        except Exception as exc:
            log.warning("notifier: could not connect yet (%s); retrying in the background", exc)
            self._lost.set()
        self._supervisor = asyncio.create_task(self._supervise(), name="notifier-postgres")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)
        self._subscriptions.announce_state(False)

    async def listen(self, topic: str, handler: MessageHandler) -> Unlisten:
        if self._subscriptions.add(topic, handler):
            async with self._lock:
                if self.connected:
                    assert self._conn is not None
                    # Lost meanwhile: the reconnect LISTENs to every registered topic.
                    with contextlib.suppress(
                        OSError,
                        asyncpg.PostgresConnectionError,
                        asyncpg.InterfaceError,
                        asyncpg.InternalClientError,
                    ):
                        await self._conn.add_listener(topic, self._on_notification)

        async def unlisten() -> None:
            if self._subscriptions.remove(topic, handler):
                async with self._lock:
                    if self.connected:
                        assert self._conn is not None
                        # A connection going away has nothing left to unlisten.
                        with contextlib.suppress(
                            OSError,
                            asyncpg.PostgresError,
                            asyncpg.InterfaceError,
                            asyncpg.InternalClientError,
                        ):
                            await self._conn.remove_listener(topic, self._on_notification)

        return unlisten

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        return self._subscriptions.add_state_handler(handler)

    def health(self) -> tuple[str, bool]:
        if self.polling:
            return "polling (no direct URL)", True
        return ("listening" if self.connected else "reconnecting"), self.connected

    # --- the connection ------------------------------------------------------------------

    async def _open(self) -> None:
        assert self._connect is not None
        async with self._lock:
            conn = await self._connect()
            try:
                conn.add_termination_listener(self._on_terminated)
                for topic in list(self._subscriptions.by_topic):
                    await conn.add_listener(topic, self._on_notification)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
            self._lost.clear()
        self._subscriptions.announce_state(True)

    async def _supervise(self) -> None:
        while not self._stopping:
            # Woken by the termination callback; the look every WATCH_SECONDS catches a
            # connection that closed without one (it died before the callback was attached).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_SECONDS):
                    await self._lost.wait()
            if not self._lost.is_set():
                if self.connected:
                    continue
                log.warning("notifier: LISTEN connection found closed")
                self._conn = None
                self._subscriptions.announce_state(False)
            delay = RECONNECT_FIRST_DELAY
            while not self._stopping:
                try:
                    await self._open()
                except Exception as exc:
                    log.warning("notifier: reconnect failed (%s); again in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = next_delay(delay)
                    continue
                RECONNECTS.labels("postgres").inc()
                log.info("notifier: reconnected")
                break

    def _on_terminated(self, conn: object) -> None:
        if self._stopping or conn is not self._conn:
            return
        log.warning("notifier: LISTEN connection lost")
        self._conn = None
        self._subscriptions.announce_state(False)
        self._lost.set()

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._subscriptions.deliver(channel, str(payload))
