"""A worker process's life: the sweep timer and the outbox relay poller in cpu workers, and handing
running windows back on shutdown so another worker takes them at once instead of after a lease."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from celery import signals

from jobs.settings import get_settings
from workers import celery_app, meter, scratch
from workers.dispatch import Dispatcher
from workers.engines.http import abort_all
from workers.runtime import built_runtime
from workers.sweeper import SweepTimer, sweep_period_s

log = logging.getLogger(__name__)

_timer: SweepTimer | None = None
_poller: meter.RelayPoller | None = None
_scratch: Path | None = None


def owner_prefix() -> str:
    """Lease owners of this process start with this; shutdown releases exactly these leases."""
    return f"{socket.gethostname()}:{os.getpid()}:"


@signals.worker_init.connect
def _claim_scratch(**_: Any) -> None:
    """Before the pool forks: the worker's temporary folder, and dead workers' ones removed
    (workers/scratch.py)."""
    global _scratch
    try:
        _scratch = scratch.claim()
    except OSError:
        log.exception("could not make the worker's temporary folder; using the default one")


@signals.worker_shutdown.connect
def _remove_scratch(**_: Any) -> None:
    scratch.release(_scratch)


@signals.worker_ready.connect
def _start_sweep_timer(sender: Any = None, **_: Any) -> None:
    """Every cpu worker runs the sweep timer (the Redis lock keeps it to one sweep per period) and
    the outbox relay poller (the outbox's lock keeps each step to one send)."""
    global _timer, _poller
    consumer = sender
    queues = {q.name for q in consumer.app.amqp.queues.consume_from.values()}
    if celery_app.CPU_QUEUE not in queues:
        return
    settings = get_settings()
    dispatcher = Dispatcher(settings)
    _timer = SweepTimer(settings.broker_url, sweep_period_s(settings.lease_seconds), dispatcher.send_sweep)
    _timer.start()
    log.info("sweep timer: every %.1f s", _timer.period_s)
    _poller = meter.RelayPoller(settings, dispatcher)
    _poller.start()


@signals.worker_shutting_down.connect
def release_on_shutdown(**_: Any) -> None:
    """Give back the leases of running windows and requeue them, so another worker takes them at
    once. Runs first thing on a stop signal (``celery_app.STOP_HOOKS``); again, harmlessly, when
    Celery announces the shutdown."""
    if _timer is not None:
        _timer.stop()
    if _poller is not None:
        _poller.stop()
    rt = built_runtime()
    if rt is not None:  # a prefork parent runs no task: its children release their own
        try:
            # Celery's threads pool cannot cancel a running task in a cold shutdown, so it would
            # wait for the window to finish; the windows go back to the meter (pending, unsent),
            # which sends them now so another worker takes them at once.
            for job_id, index in rt.store.release_leases(owner_prefix()):
                log.warning("job %s: shutting down: window %d handed back to the queue", job_id, index)
            meter.meter(rt)
        except Exception:
            log.exception("shutting down: could not hand back running windows")
    # Only after the hand-back (an aborted window would otherwise hand itself back as pending with
    # no message): its requests to vLLM stop now, not at the grace limit, or it runs twice on the GPU.
    aborted = abort_all()
    if aborted:
        log.warning("shutting down: %d request(s) to the model server aborted", aborted)


celery_app.STOP_HOOKS.append(release_on_shutdown)


@signals.worker_process_shutdown.connect
def _release_in_child(**_: Any) -> None:
    release_on_shutdown()
