"""/metrics for Prometheus: jobs by state, window durations, queue depth, and the fleet's backlog
(``workers.fleet``: estimated GPU seconds by queue, tenant and priority, which the gpu workers'
autoscaler reads; jobs waiting to be reduced; the drop folder's ledger), read at scrape time.

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
from workers.fleet import fleet

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
        yield from self._fleet()

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

    def _fleet(self) -> Iterator[Metric]:
        now = fleet(self.rt, with_queues=False)  # queue depths: _queues, once per scrape
        cost = self.rt.settings.gpu_seconds_per_audio_second
        labels = ["queue", "tenant", "priority"]
        gpu = GaugeMetricFamily(
            "voxbatch_gpu_backlog_seconds",
            f"Estimated GPU seconds of work waiting or running: audio seconds x {cost:g} "
            "(VOXBATCH_GPU_SECONDS_PER_AUDIO_SECOND)",
            labels=labels,
        )
        audio = GaugeMetricFamily(
            "voxbatch_backlog_audio_seconds",
            "Seconds of audio the model has still to hear (windows pending or running, recordings in split)",
            labels=labels,
        )
        for row in now.backlog:
            gpu.add_metric([row.queue, row.tenant, row.priority], row.gpu_s)
            audio.add_metric([row.queue, row.tenant, row.priority], row.audio_s)
        reducing = GaugeMetricFamily(
            "voxbatch_jobs_waiting_reduce",
            "Jobs whose windows are all done, waiting for their reduce or in it",
            labels=["tenant"],
        )
        for tenant, n in now.reducing.items():
            reducing.add_metric([tenant], float(n))
        drop = GaugeMetricFamily(
            "voxbatch_drop_objects",
            "Drop-folder recordings by ledger state: seen (all) = claimed + submitted + done + rejected",
            labels=["state"],
        )
        for state, n in now.drop.items():
            drop.add_metric([state], float(n))
        yield from (gpu, audio, reducing, drop)


def registry_for(rt: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VoxbatchCollector(rt))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
