"""A cap on redeliveries: a message whose worker keeps dying must not loop forever.

``task_reject_on_worker_lost`` puts a task's message back when its worker process dies (an OOM
kill, a segfault in a decoder), which is what a crash on one machine needs. A recording that kills
every worker that splits it would then be delivered forever. Each delivery of a task (by Celery
task id and retry number) is counted in Redis; past ``VOXBATCH_MAX_REDELIVERIES`` the job fails
with the reason and the message is acked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from jobs.runtime import Runtime
from jobs.steps.ending import fail

log = logging.getLogger(__name__)

KEY_TTL_S = 7 * 24 * 3600


def redis_counter(broker_url: str) -> Callable[[str], int]:
    """INCR on the broker's Redis, the key kept a week."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)

    def count(key: str) -> int:
        pipe = client.pipeline()
        pipe.incr(f"voxbatch:deliveries:{key}")
        pipe.expire(f"voxbatch:deliveries:{key}", KEY_TTL_S)
        return int(pipe.execute()[0])

    return count


def allowed(rt: Runtime, job_id: str, step: str, delivery_key: str, count: Callable[[str], int]) -> bool:
    """Count this delivery; False (and the job failed with the reason) past the cap."""
    try:
        n = count(delivery_key)
    except Exception as exc:  # the broker is the one carrying the message: a hiccup is no reason to stop
        log.warning("job %s: could not count deliveries of %s: %s", job_id, step, exc)
        return True
    if n <= rt.settings.max_redeliveries + 1:
        return True
    reason = (
        f"the {step} step was started {n} times and its worker died each time (out of memory, or a "
        f"crash in the decoder?); give the workers more memory or check the recording, then retry the job"
    )
    log.error("job %s: %s", job_id, reason)
    fail(rt, job_id, reason)
    return False
