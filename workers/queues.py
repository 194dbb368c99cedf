"""Queue names, task names and routes: what every process that sends or consumes work agrees on.

No Celery here, and nothing is built at import: the API, the CLI and the watcher import this to
name queues without loading the workers' Celery app (``workers.celery_app`` builds that one).
"""

from __future__ import annotations

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
QUEUES = (CPU_QUEUE, GPU_QUEUE)

SPLIT = "voxbatch.split"
WINDOW = "voxbatch.window"
OVERALL = "voxbatch.overall"
REDUCE = "voxbatch.reduce"
ANNOUNCE = "voxbatch.announce"
PROCEEDINGS = "voxbatch.proceedings"
SWEEP = "voxbatch.sweep"
WEBHOOK = "voxbatch.webhook"

# The overall summary is a model request: it waits where model requests are sent (a gpu worker's
# request scheduler), never in a cpu worker's slot.
ROUTES = {
    SPLIT: CPU_QUEUE,
    WINDOW: GPU_QUEUE,
    OVERALL: GPU_QUEUE,
    REDUCE: CPU_QUEUE,
    ANNOUNCE: CPU_QUEUE,
    # A collection's proceedings end with its summary, a text-only model request.
    PROCEEDINGS: GPU_QUEUE,
    SWEEP: CPU_QUEUE,
    WEBHOOK: CPU_QUEUE,
}

# The task a step of jobs.steps.next becomes.
STEP_TASKS = {
    "split": SPLIT,
    "window": WINDOW,
    "overall": OVERALL,
    "reduce": REDUCE,
    "proceedings": PROCEEDINGS,
    "announce": ANNOUNCE,
}
