"""/metrics for Prometheus: jobs by state, window durations and queue depth, read at scrape time.

Everything comes from the sources of truth (the database, Redis list lengths), so every API
replica reports the same numbers and nothing is lost on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.models import JobStatus
from jobs.runtime import Runtime
from workers.dispatch import queue_depths

log = logging.getLogger(__name__)

# Seconds one window spends in the engine; a 30-minute window on a busy GPU can take minutes.
WINDOW_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)


class VoxbatchCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._windows()
        yield from self._queues()

    def _jobs(self) -> Iterator[Metric]:
        rows = self.rt.store.counts_by_status()
        jobs = GaugeMetricFamily("voxbatch_jobs", "Jobs by state", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], float(rows.get(state.value, 0)))
        yield jobs

    def _windows(self) -> Iterator[Metric]:
        count, total, below = self.rt.store.window_durations(WINDOW_BUCKETS)
        hist = HistogramMetricFamily(
            "voxbatch_window_duration_seconds", "Seconds each finished window spent in the engine"
        )
        buckets = [(str(b), float(c)) for b, c in zip(WINDOW_BUCKETS, below, strict=True)]
        hist.add_metric([], [*buckets, ("+Inf", float(count))], float(total))
        yield hist

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("voxbatch_queue_depth", "Messages waiting in each queue", labels=["queue"])
        up = GaugeMetricFamily("voxbatch_broker_up", "1 when the broker answered this scrape")
        try:
            for queue, n in queue_depths(self.rt.settings.broker_url).items():
                depth.add_metric([queue], float(n))
            up.add_metric([], 1.0)
        except Exception as exc:
            log.warning("metrics: broker unreachable: %s", exc)
            up.add_metric([], 0.0)
        yield depth
        yield up


def registry_for(rt: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VoxbatchCollector(rt))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
