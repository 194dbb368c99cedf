"""The fleet at a glance: what autoscaling and operators read (``/metrics``, ``voxbatch status --fleet``).

- **Backlog in GPU seconds**, by queue, tenant and priority: audio the model has still to hear
  (``JobStore.backlog``: windows pending or running, recordings still being split) times
  ``VOXBATCH_GPU_SECONDS_PER_AUDIO_SECOND``. The KEDA ScaledObject of the gpu workers scales on it
  (infra/k8s/keda.yaml), to zero when it is zero.
- **Jobs waiting to be reduced**, by tenant (all windows done, reduce not ended).
- **The drop folder's backlog** from its ledger (``workers.drop_ledger.ledger_counts``).
- **Messages waiting** in each Celery queue (None when the broker does not answer).

Everything is read from the sources of truth at the time of asking, so every API replica reports
the same numbers: sum across tenants, never across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.runtime import Runtime
from workers.celery_app import ROUTES, WINDOW
from workers.dispatch import queue_depths
from workers.drop_ledger import ledger_counts

# Jobs without a tenant (``voxbatch submit``): a label value no tenant name can take
# (tenant names start with a letter or digit, api/keys.py).
NO_TENANT = "-"


@dataclass(frozen=True)
class Backlog:
    queue: str
    tenant: str
    priority: str
    audio_s: float
    gpu_s: float


@dataclass(frozen=True)
class Fleet:
    backlog: list[Backlog]
    reducing: dict[str, int]  # tenant → jobs waiting to be reduced
    drop: dict[str, int]  # seen, claimed, submitted, done, rejected
    queues: dict[str, int] | None  # queue → messages waiting; None: the broker did not answer

    def gpu_seconds(self, queue: str | None = None) -> float:
        return sum(b.gpu_s for b in self.backlog if queue is None or b.queue == queue)


def fleet(rt: Runtime, *, with_queues: bool = True) -> Fleet:
    cost = rt.settings.gpu_seconds_per_audio_second
    window_queue = ROUTES[WINDOW]
    backlog = [
        Backlog(window_queue, tenant or NO_TENANT, priority, audio_s, audio_s * cost)
        for (tenant, priority), audio_s in sorted(
            rt.store.backlog().items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        )
    ]
    reducing = {tenant or NO_TENANT: n for tenant, n in rt.store.reducing_by_tenant().items()}
    queues: dict[str, int] | None = None
    if with_queues:
        try:
            queues = queue_depths(rt.settings.broker_url)
        except Exception:
            queues = None
    return Fleet(
        backlog=backlog, reducing=dict(sorted(reducing.items())), drop=ledger_counts(rt.db), queues=queues
    )
