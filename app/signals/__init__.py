"""The signals advisor: every scaling signal measured live, the stage, and the flag to flip.

    from app.signals import measure
    report = await measure(services.db, services.settings)   # Report; .document() is JSON

Signals come from three places (docs/signals.md):

- the database, by SQL on statistics views and catalogs (database.py);
- each web process's memory — HTTP latencies and errors, pool waits, cache reads, host
  CPU — written by its ``ProcessReporter`` to ``signal_process_reports`` every
  SIGNAL_REPORT_SECONDS, and added up across live processes (process.py);
- rates between samples (read share, publish rate), from counters the sampling job keeps.

The periodic job ``pgfirst.sample_signals`` stores a sample every minute (history.py):
hysteresis, charts and ``app signals --since`` read it; ``pgfirst.prune_signals`` keeps
SIGNAL_RETENTION_HOURS of it. Outputs: ``GET /ops/signals`` and ``/ops`` (router.py,
page.py), and ``app signals`` (app/cli/signals.py) — the same document everywhere.
"""

from __future__ import annotations

from app.signals.advisor import measure
from app.signals.jobs import signal_jobs
from app.signals.model import Report, Signal, Stage
from app.signals.process import ProcessReporter

__all__ = ["ProcessReporter", "Report", "Signal", "Stage", "measure", "signal_jobs"]
