"""Process-wide tuning applied once a process has started: the garbage collector.

A started web or worker process holds a few hundred thousand long-lived objects (modules,
the FastAPI app and its models, the services). CPython's oldest-generation collection walks
every one of them, and it runs every few seconds under load: with 1,108 live streams on one
`app serve` those collections took 60-110 ms each, and every event and request in flight
waited them out — most of the delivery p99 (docs/reliability.md).
``gc.freeze()`` moves everything alive at that moment to a permanent generation that
collections skip, so a full collection walks only what was allocated since (13-16 ms in the
same run). Frozen objects are still freed by reference counting; only reference cycles among
them stay, and they were made to live as long as the process anyway.

On with GC_FREEZE_AFTER_STARTUP (default: everywhere but ENV=test, whose one process starts
hundreds of apps).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect once, then exempt every object alive now from later collections.

    Returns how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("garbage collector: %d startup objects frozen", frozen)
    return frozen
