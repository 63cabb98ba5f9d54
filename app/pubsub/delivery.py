"""What both brokers share: subscribers served from one fan-out, fed by the process's notifier.

A broker listens on a channel's topic while at least one local subscriber wants it and
stops when the last one leaves. When the notifier reports that its connection was lost and
is back, the broker replays from its store (the events table, the Redis streams) what was
published meanwhile; the fan-out remembers the ids it delivered, so the overlap between the
replay and live messages reaches nobody twice. The backends add how they publish, store
and read events back (``_events_since``) and how a message becomes an event
(``_on_message``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from app.notifier import Notifier, Unlisten
from app.pubsub.fanout import Event, Fanout, Subscription

log = logging.getLogger(__name__)

# A replay after a reconnect looks this many ids back from the last one delivered, to
# cover events whose ids were assigned before the gap but delivered after it.
REPLAY_LOOKBACK_IDS = 1_000
REPLAY_RETRY_FIRST_DELAY = 0.1
REPLAY_RETRY_MAX_DELAY = 5.0


class NotifiedBroker:
    topic_prefix: ClassVar[str]
    # The errors of the backend's store that a failed replay may raise; it is retried at
    # the next reconnect.
    replay_errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, notifier: Notifier, *, queue_size: int, replay_limit: int) -> None:
        self.notifier = notifier
        self.fanout = Fanout(queue_size=queue_size)
        self.replay_limit = replay_limit
        self._unlisten: dict[str, Unlisten] = {}
        self._forget_state: Callable[[], None] | None = None
        self._missed = False  # the notifier was lost since the last replay
        # Held while events go out, so that a replay's older events precede newer live ones.
        self._dispatching = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def _events_since(
        self, channels: list[str], since: int, limit: int | None
    ) -> list[Event]:
        """Stored events of ``channels`` after id ``since``, oldest first (None: all)."""
        raise NotImplementedError

    def _on_message(self, topic: str, message: str) -> None:
        raise NotImplementedError

    # --- subscribe -----------------------------------------------------------------------

    async def subscribe(self, channels: list[str], *, since: int | None = None) -> Subscription:
        subscription, new_channels = self.fanout.add(channels)
        try:
            for channel in new_channels:
                self._unlisten[channel] = await self.notifier.listen(
                    self.topic_prefix + channel, self._on_message
                )
            if since is not None:
                subscription.preload(await self._events_since(channels, since, self.replay_limit))
        except BaseException:
            await self.unsubscribe(subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        await self._unlisten_channels(self.fanout.remove(subscription))

    def health(self) -> tuple[str, bool]:
        return self.notifier.health()

    # --- lifecycle -----------------------------------------------------------------------

    def _watch_notifier(self) -> None:
        self._forget_state = self.notifier.on_state(self._on_notifier_state)

    async def _stop_delivery(self, *tasks: asyncio.Task[None] | None) -> None:
        if self._forget_state is not None:
            self._forget_state()
        running = [task for task in (*tasks, *self._background) if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self.fanout.close_all()
        for unlisten in self._unlisten.values():
            await unlisten()
        self._unlisten.clear()

    # --- delivery ------------------------------------------------------------------------

    def _on_notifier_state(self, connected: bool) -> None:
        if not connected:
            self._missed = True
        elif self._missed:
            self._missed = False
            self._spawn(self._replay_gap())

    async def _replay_gap(self) -> None:
        # The store can still be failing when the notifier is back (pooled connections
        # the same restart ended): retry until it answers, unless the notifier is lost
        # again, whose own reconnect then replays.
        delay = REPLAY_RETRY_FIRST_DELAY
        while True:
            channels = self.fanout.channels()
            if not channels:
                return
            since = max(0, self.fanout.last_id - REPLAY_LOOKBACK_IDS)
            try:
                async with self._dispatching:
                    for event in await self._events_since(channels, since, None):
                        self._dispatch(event)
                return
            except self.replay_errors as exc:
                if not self.notifier.connected:
                    self._missed = True
                    return
                log.warning(
                    "pubsub: replay after reconnect failed (%s); again in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REPLAY_RETRY_MAX_DELAY)

    def _dispatch(self, event: Event) -> None:
        emptied = self.fanout.dispatch(event)
        if emptied:
            self._spawn(self._unlisten_channels(emptied))

    async def _unlisten_channels(self, channels: list[str]) -> None:
        for channel in channels:
            unlisten = self._unlisten.pop(channel, None)
            if unlisten is not None:
                await unlisten()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
