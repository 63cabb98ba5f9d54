"""L1 kept in step with every other process: announcements out, announcements in.

Every write in any process announces what it changed, in the same round trip as the write
(the backend sends it: NOTIFY on Postgres, PUBLISH on Redis); every process hears the
others' through its notifier and evicts those keys from its L1. Messages are plain text,
``"<instance> k <key> <key> ..."``, ``"<instance> p <prefix>"`` or ``"<instance> *"`` (empty
L1: the key list would not fit a NOTIFY payload); a process ignores its own.

Three rules keep L1 from serving a value older than the invalidation delay:

1. L1 serves only while the notifier is connected. Announcements sent while it is down are
   lost for good, so on a drop L1 is emptied and bypassed, and it starts empty again when
   the notifier is back.
2. A generation counter, bumped by every local write and every announcement heard: a value
   read from the backend fills L1 only if its key was not written or evicted while it was
   read (it may predate the write). Each written key remembers the generation of its last
   write, so a write of one key does not keep the reads of every other key out of L1 —
   with many users, some key is being written at almost any moment. Evictions that name no
   key (a prefix, everything, a notifier drop) hold back every read in flight.
3. No entry outlives CACHE_L1_TTL_SECONDS or its backend expiry, whatever is missed. Each
   entry's L1 lifetime is drawn between (1 - L1_TTL_SPREAD) and 1 times that TTL: entries
   filled together (every user's session after a restart, say) do not all expire in the
   same instant and send their refills to the backend in one burst.

Refresh-ahead: the first read in the last L1_REFRESH_AHEAD of an entry's L1 lifetime gets
the entry as usual and marks its key due; the front end reads the key again in the
background and refills L1 under rule 2 like any other read — due keys of ``get`` and
``get_many`` in one batched backend round trip at a time (refresh.py), a ``get_or_set`` key
with its loader too when the backend's copy is gone or about to expire (front.py). A key
read steadily is then never missed in L1, so its readers never wait for it.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

from app.cache.local import MISSING, Clock, LocalCache
from app.config import Settings
from app.notifier import Notifier, Unlisten

# Over this many bytes of keys in one write, other processes are told to empty their L1
# instead (NOTIFY carries at most 8,000 bytes).
ANNOUNCE_MAX_BYTES = 7_000
# An L1 entry lives between (1 - L1_TTL_SPREAD) and 1 times CACHE_L1_TTL_SECONDS.
L1_TTL_SPREAD = 0.2
# The share of an entry's L1 lifetime, at its end, in which a read asks for a refresh.
L1_REFRESH_AHEAD = 0.25
# Keys whose last write generation is remembered; past it, all are forgotten at once and
# count as evicted together (reads in flight then stay out of L1: safe, merely a miss).
WRITTEN_KEPT = 10_000


class L1Tier:
    """This process's L1 (``entries``), served only while ``serving``."""

    def __init__(self, settings: Settings, notifier: Notifier, clock: Clock) -> None:
        self.entries = LocalCache(settings.cache_l1_max_entries)
        self.enabled = settings.cache_l1_max_entries > 0
        self.serving = False
        self.generation = 0
        # key -> generation of its last write or announced eviction in this process
        self._written: dict[str, int] = {}
        # generation of the last eviction that named no key
        self._evicted_all = 0
        self._random = random.Random()  # noqa: S311 - spreads expiry times, guards nothing
        self.invalidations_received = 0
        # New for every Cache: two processes (or two instances in one) must not share an
        # id, or each would ignore the other's invalidations as its own.
        self.instance = secrets.token_hex(4)
        self._ttl = settings.cache_l1_ttl_seconds
        self._notifier = notifier
        self._clock = clock
        self._unlisten: Unlisten | None = None
        self._forget_state: Callable[[], None] | None = None

    async def start(self, topic: str) -> None:
        """Hear other processes' announcements on ``topic`` (nothing to hear with L1 off)."""
        if not self.enabled:
            return
        self._forget_state = self._notifier.on_state(self._on_notifier_state)
        self._unlisten = await self._notifier.listen(topic, self._on_announcement)
        self._on_notifier_state(self._notifier.connected)

    async def stop(self) -> None:
        if self._forget_state is not None:
            self._forget_state()
            self._forget_state = None
        if self._unlisten is not None:
            unlisten, self._unlisten = self._unlisten, None
            await unlisten()
        self.serving = False
        self.entries.clear()

    def health(self) -> tuple[str, bool]:
        if not self.enabled:
            return "l1 off", True
        return ("listening" if self.serving else "l1 bypassed: listener down"), True

    # --- filling ---------------------------------------------------------------------------

    def fill(self, key: str, value: Any, remaining: float | None, generation: int) -> None:
        """Keep a value read from the backend since ``generation``, unless its key was
        written or evicted meanwhile; for at most the L1 TTL and its backend expiry."""
        if (
            self.serving
            and self._evicted_all <= generation
            and self._written.get(key, 0) <= generation
        ):
            lifetime = self._lifetime()
            self._put(key, value, lifetime if remaining is None else min(lifetime, remaining))

    def keep_written(self, key: str, value: Any, ttl: float) -> None:
        """Keep a value this process just stored."""
        if self.serving:
            self._put(key, value, min(self._lifetime(), ttl))

    def _put(self, key: str, value: Any, lifetime: float) -> None:
        now = self._clock()
        refresh_at = now + lifetime * (1.0 - L1_REFRESH_AHEAD)
        self.entries.put(key, value, now + lifetime, refresh_at)

    @property
    def shortest_lifetime(self) -> float:
        """The least an entry lives in L1 when its backend copy does not cut it short."""
        return self._ttl * (1.0 - L1_TTL_SPREAD)

    def _lifetime(self) -> float:
        return self._ttl * (1.0 - L1_TTL_SPREAD * self._random.random())

    def lookup(self, key: str, now: float) -> Any:
        """The L1 value, or MISSING (always while not serving)."""
        return self.entries.get(key, now) if self.serving else MISSING

    # --- local writes ----------------------------------------------------------------------

    def written(self, keys: list[str]) -> None:
        """Keys this process is changing: out of L1, and reads in flight must not refill it."""
        self._evict_keys(keys)

    def written_prefix(self, prefix: str) -> None:
        self._evict_everything_read()
        self.entries.evict_prefix(prefix)

    def _evict_keys(self, keys: list[str]) -> None:
        self.generation += 1
        generation = self.generation
        written = self._written
        if len(written) + len(keys) > WRITTEN_KEPT:
            written.clear()
            self._evicted_all = generation
        for key in keys:
            written[key] = generation
            self.entries.evict(key)

    def _evict_everything_read(self) -> None:
        """Every read in flight must stay out of L1 (what it read is not known)."""
        self.generation += 1
        self._evicted_all = self.generation
        self._written.clear()

    def announce(self, keys: list[str]) -> str:
        """The message that evicts ``keys`` elsewhere ("" with L1 off: nobody listens)."""
        if not self.enabled:
            return ""
        message = f"{self.instance} k {' '.join(keys)}"
        if len(message.encode()) > ANNOUNCE_MAX_BYTES:
            return f"{self.instance} *"
        return message

    def announce_prefix(self, prefix: str) -> str:
        return f"{self.instance} p {prefix}" if self.enabled else ""

    # --- what the notifier reports -----------------------------------------------------------

    def _on_announcement(self, topic: str, message: str) -> None:
        instance, _, rest = message.partition(" ")
        if instance == self.instance:
            return
        self.invalidations_received += 1
        kind, _, argument = rest.partition(" ")
        if kind == "k":
            self._evict_keys(argument.split(" "))
        elif kind == "p":
            self._evict_everything_read()
            self.entries.evict_prefix(argument)
        else:
            self._evict_everything_read()
            self.entries.clear()

    def _on_notifier_state(self, connected: bool) -> None:
        # Whatever was announced while disconnected is unknown: start L1 empty.
        self._evict_everything_read()
        self.entries.clear()
        self.serving = connected and self.enabled
