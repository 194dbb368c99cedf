"""Sending work to the queues: steps (``jobs.steps.next.Step``) become Celery messages.

One ``Dispatcher`` per Runtime (``dispatcher(rt)``), built from the Runtime's Settings, so an API or
CLI built with ``create_app(settings)`` enqueues to that broker, not to whatever the environment
names; one Celery app (and connection pool) per broker per process. Tasks are sent by name: callers
never import the task bodies. *When* a step is sent is decided by ``workers.meter`` (the outbox
relay and the gpu queue's meter); only it, the sweep timer and webhooks call this.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.next import Step
from workers.queues import CPU_QUEUE, QUEUES, ROUTES, STEP_TASKS, SWEEP, WEBHOOK

if TYPE_CHECKING:
    from celery import Celery

# Kombu keeps priority messages of queue Q in Redis lists Q, Q\x06\x163, Q\x06\x166, Q\x06\x169.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.broker_url = settings.broker_url
        with _apps_lock:
            # One Celery app (and its connection pool) per broker in this process.
            if self.broker_url not in _apps:
                from workers.celery_app import make_celery

                _apps[self.broker_url] = make_celery(settings)
            self.app = _apps[self.broker_url]

    def send(self, step: Step, retry: bool = True, priority: int = 0) -> None:
        """``retry=False``: fail soon when the broker does not answer (a caller holding a lock
        keeps the step for its next turn instead of waiting out the publish retries). Steps
        store no result (the database holds the outcome): the sender never waits on the result
        backend either."""
        task = STEP_TASKS[step.kind]
        args: list[object] = [step.job_id] if step.kind != "window" else [step.job_id, step.index]
        self.app.send_task(
            task, args=args, queue=ROUTES[task], retry=retry, ignore_result=True, priority=priority
        )

    def send_all(self, steps: list[Step]) -> None:
        for step in steps:
            self.send(step)

    def send_sweep(self, expires_s: float) -> None:
        # A sweep that waited longer than one period is stale: the next one is already on its way.
        self.app.send_task(SWEEP, args=[], queue=ROUTES[SWEEP], expires=expires_s)

    def send_webhook(self, job_id: str, job_attempt: int, window: int | None = None) -> None:
        args: list[object] = [job_id, job_attempt] if window is None else [job_id, job_attempt, window]
        self.app.send_task(WEBHOOK, args=args, queue=CPU_QUEUE)


def dispatcher(rt: Runtime) -> Dispatcher:
    """The Runtime's dispatcher, built on first use."""
    if rt.dispatcher is None:
        rt.dispatcher = Dispatcher(rt.settings)
    return rt.dispatcher


def queue_depths(broker_url: str, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting in each queue on the Redis broker, priority lists included."""
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
