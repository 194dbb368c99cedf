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
from sqlalchemy import case, func
from sqlmodel import col, select

from jobs.models import Job, JobStatus, Window, WindowStatus
from jobs.pipeline import Runtime

log = logging.getLogger(__name__)

# Seconds one window spends in the engine; a 30-minute window on a busy GPU can take minutes.
WINDOW_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
# Kombu keeps priority messages of queue Q in Redis lists Q, Q\x06\x163, Q\x06\x166, Q\x06\x169.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_depths(broker_url: str, queues: tuple[str, ...]) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with client.pipeline() as pipe:
            for queue in queues:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(queue + suffix)
            lengths = pipe.execute()
    finally:
        client.close()
    n = len(_PRIORITY_SUFFIXES)
    return {q: int(sum(lengths[i * n : (i + 1) * n])) for i, q in enumerate(queues)}


class VoxbatchCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._windows()
        yield from self._queues()

    def _jobs(self) -> Iterator[Metric]:
        with self.rt.db.session() as s:
            rows = dict(s.exec(select(Job.status, func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily("voxbatch_jobs", "Jobs by state", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], float(rows.get(state, 0)))
        yield jobs

    def _windows(self) -> Iterator[Metric]:
        done = (col(Window.status) == WindowStatus.done) & col(Window.engine_s).is_not(None)
        columns = [func.count(case((col(Window.engine_s) <= b, 1))) for b in WINDOW_BUCKETS]
        with self.rt.db.session() as s:
            row = s.exec(
                select(func.count(), func.coalesce(func.sum(Window.engine_s), 0.0), *columns).where(done)
            ).one()
        count, total, *below = (float(v or 0) for v in row)
        hist = HistogramMetricFamily(
            "voxbatch_window_duration_seconds", "Seconds each finished window spent in the engine"
        )
        buckets = [(str(b), float(c)) for b, c in zip(WINDOW_BUCKETS, below, strict=True)]
        hist.add_metric([], [*buckets, ("+Inf", float(count))], float(total))
        yield hist

    def _queues(self) -> Iterator[Metric]:
        from workers.celery_app import QUEUES

        depth = GaugeMetricFamily("voxbatch_queue_depth", "Messages waiting in each queue", labels=["queue"])
        up = GaugeMetricFamily("voxbatch_broker_up", "1 when the broker answered this scrape")
        try:
            for queue, n in queue_depths(self.rt.settings.broker_url, QUEUES).items():
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
