"""Local fan-out: one process-wide stream of events to any number of subscribers.

Both brokers feed events in through ``Fanout.dispatch``; each subscriber has a bounded
queue. A subscriber that falls ``queue_size`` events behind is dropped with a reason
instead of growing memory: it ends with ``SubscriberDropped`` and can resume from the last
id it saw (SSE Last-Event-ID does exactly that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

EVENTS_DELIVERED = Counter("pubsub_events_delivered_total", "Events handed to local subscribers.")
SUBSCRIBERS_DROPPED = Counter(
    "pubsub_subscribers_dropped_total", "Subscribers dropped for falling behind."
)
SUBSCRIBERS = Gauge("pubsub_subscribers", "Local subscribers connected now.")


@dataclass(frozen=True, slots=True)
class Event:
    """One published event. ``encoded`` holds its wire forms (an SSE frame, a WebSocket
    message), made by the first subscriber that sends it and reused by the others: an event
    fans out to every client on its channel, and encoding it once per client was a share
    of each delivery's cost."""

    id: int
    channel: str
    payload: dict[str, Any]
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)


class SubscriberDropped(Exception):
    """The subscriber fell too far behind and was disconnected; resume from its last id."""


@dataclass(eq=False)
class Subscription:
    """An async iterator of events on some channels, replayed ones first."""

    channels: frozenset[str]
    queue_size: int
    _replay: deque[Event] = field(default_factory=deque)
    # The ids the replay delivered: a live event is skipped only if it is one of them. (Not
    # "any id up to the newest replayed": an event with a smaller id can commit after the
    # replay read the table, and then arrives live only.)
    _replayed: set[int] = field(default_factory=set)
    _queue: asyncio.Queue[Event | None] = field(init=False)
    dropped_reason: str | None = None
    closed: bool = False

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._replay:
                return self._replay.popleft()
            if self._queue.empty():
                if self.dropped_reason is not None:
                    raise SubscriberDropped(self.dropped_reason)
                if self.closed:
                    raise StopAsyncIteration
            event = await self._queue.get()
            if event is None:
                continue  # a wake-up from close() or drop
            if event.id in self._replayed:
                continue  # already delivered by the replay
            return event

    def preload(self, events: Iterable[Event]) -> None:
        """Queue replayed events ahead of live ones (called before live delivery starts)."""
        for event in events:
            self._replay.append(event)
            self._replayed.add(event.id)

    def _offer(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def _wake(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a full queue is not waited on
            self._queue.put_nowait(None)


class Fanout:
    """Registry of local subscriptions by channel, with bounded per-id deduplication."""

    def __init__(self, *, queue_size: int, remember_ids: int = 4096) -> None:
        self.queue_size = queue_size
        self._by_channel: dict[str, set[Subscription]] = {}
        self._recent: deque[int] = deque(maxlen=remember_ids)
        self._recent_set: set[int] = set()
        self.last_id = 0

    def channels(self) -> list[str]:
        return list(self._by_channel)

    def add(self, channels: Iterable[str]) -> tuple[Subscription, list[str]]:
        """Register a subscription; returns it and the channels that had no subscriber."""
        subscription = Subscription(frozenset(channels), self.queue_size)
        new_channels = []
        for channel in subscription.channels:
            if channel not in self._by_channel:
                self._by_channel[channel] = set()
                new_channels.append(channel)
            self._by_channel[channel].add(subscription)
        SUBSCRIBERS.inc()
        return subscription, new_channels

    def remove(self, subscription: Subscription) -> list[str]:
        """Unregister; returns the channels left without any subscriber."""
        emptied = []
        for channel in subscription.channels:
            members = self._by_channel.get(channel)
            if members is None or subscription not in members:
                continue
            members.discard(subscription)
            if not members:
                del self._by_channel[channel]
                emptied.append(channel)
        if not subscription.closed:
            subscription.closed = True
            subscription._wake()
            SUBSCRIBERS.dec()
        return emptied

    def seen(self, event_id: int) -> bool:
        return event_id in self._recent_set

    def dispatch(self, event: Event) -> list[str]:
        """Hand an event to every subscriber of its channel, once per id.

        Returns channels emptied by dropping slow subscribers.
        """
        if event.id in self._recent_set:
            return []
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event.id)
        self._recent_set.add(event.id)
        self.last_id = max(self.last_id, event.id)
        emptied: list[str] = []
        delivered = 0
        for subscription in list(self._by_channel.get(event.channel, ())):
            if subscription._offer(event):
                delivered += 1
                continue
            subscription.dropped_reason = (
                f"slow consumer: more than {self.queue_size} events waiting"
            )
            SUBSCRIBERS_DROPPED.inc()
            emptied.extend(self.remove(subscription))
        if delivered:
            EVENTS_DELIVERED.inc(delivered)  # once per event: the counter takes a lock
        return emptied

    def close_all(self) -> None:
        for members in list(self._by_channel.values()):
            for subscription in list(members):
                self.remove(subscription)
