"""Celery's event dispatcher, saying so when it waits on an unreachable broker.

A worker sends its ``worker-online`` and ``worker-heartbeat`` events with ``retry=True`` and no
limit (Celery 5.7, ``celery.worker.heartbeat``): when Redis is down at that moment, the worker's main
thread retries the publish once a second, logging nothing, and neither reads tasks nor notices the
lost connection of its consumer until Redis answers again. Seen as a worker that logged
``Connected to`` just before a Redis crash and then nothing at all while Redis stayed down.

Here every failed attempt of such a publish is logged, and the first publish that goes through after
a failure says the broker answers again, so an operator (and ``tests/distributed``) can tell a
worker waiting on the broker from one that is wedged. The retrying itself is Celery's, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher

log = logging.getLogger(__name__)

# What the worker logs (tests/distributed/test_broker_restarts.py reads both).
UNREACHABLE = "worker event %s not sent: the broker is unreachable (%s); trying again in %s s"
REACHABLE_AGAIN = "worker event %s sent: the broker answers again"


class Dispatcher(EventDispatcher):
    def _publish(
        self,
        event: dict[str, Any],
        producer: Any,
        routing_key: str,
        retry: bool = False,
        retry_policy: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if not retry:
            return super()._publish(event, producer, routing_key, retry, retry_policy, **kwargs)
        failures = 0

        def errback(exc: BaseException, interval: float) -> None:
            nonlocal failures
            failures += 1
            log.warning(UNREACHABLE, event.get("type"), exc, interval)

        policy = {"errback": errback, **(retry_policy or {})}
        sent = super()._publish(event, producer, routing_key, retry, policy, **kwargs)
        if failures:
            log.warning(REACHABLE_AGAIN, event.get("type"))
        return sent


class Events(CeleryEvents):
    dispatcher_cls = f"{__name__}:Dispatcher"


# ``Celery(events=...)`` (workers.celery_app).
EVENTS = f"{__name__}:Events"
