"""Prometheus metrics of the job queue, shared by the worker and the maintenance leader.

``jobs_available`` (queue depth) is sampled by the maintenance leader only: one process
reports it, the others leave it empty, so a sum over instances is the depth.

The per-job figures (``job_run_seconds``, ``job_wait_seconds``, ``jobs_finished_total``)
are counted in plain Python numbers by each worker (``JobMetrics``) — a bisect and an
addition per job instead of a locked Prometheus update — and read by one collector when
/metrics is scraped. Only the worker's event loop writes them; a scrape reads them whole
numbers at a time, so a sample is at worst one job behind.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

QUEUE_DEPTH = Gauge("jobs_available", "Jobs available to run now, by queue.", ["queue"])

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800)


class _Histogram:
    """Bucket counts (not cumulative) and a sum; the last bucket is +Inf."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_bound_text(bound), cumulative))
        family.add_metric(labels, buckets, self.total)


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class JobMetrics:
    """What the workers of this process counted; one instance, shared."""

    def __init__(self) -> None:
        self.succeeded = 0
        self._finished: dict[str, int] = {}
        self._run: dict[str, _Histogram] = {}
        self.wait = _Histogram(WAIT_BUCKETS)

    def ran(self, name: str, seconds: float) -> None:
        histogram = self._run.get(name)
        if histogram is None:
            histogram = self._run[name] = _Histogram(RUN_BUCKETS)
        histogram.observe(seconds)

    def finished(self, outcome: str) -> None:
        self._finished[outcome] = self._finished.get(outcome, 0) + 1

    def finished_count(self, outcome: str) -> int:
        if outcome == "succeeded":
            return self.succeeded
        return self._finished.get(outcome, 0)


JOB_METRICS = JobMetrics()


class _JobMetricsCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        finished = CounterMetricFamily(
            "jobs_finished", "Jobs finished, by outcome.", labels=["outcome"]
        )
        finished.add_metric(["succeeded"], JOB_METRICS.succeeded)
        for outcome, count in sorted(JOB_METRICS._finished.items()):
            finished.add_metric([outcome], count)
        yield finished
        run = HistogramMetricFamily("job_run_seconds", "Time a job's handler ran.", labels=["name"])
        for name, histogram in sorted(JOB_METRICS._run.items()):
            histogram.add_to(run, [name])
        yield run
        wait = HistogramMetricFamily("job_wait_seconds", "From run_at to claim.")
        JOB_METRICS.wait.add_to(wait, [])
        yield wait


REGISTRY.register(_JobMetricsCollector())
