"""The Celery app: broker, routing and the settings long tasks on Redis need, and how steps are enqueued.

Why each setting (Celery's and kombu's documentation for Redis; docs/operations.md):

- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message is acked only after its task ran,
  and a worker reserves one message per slot, so nothing waits unacked behind a long window.
- ``task_reject_on_worker_lost`` / ``task_retry_on_worker_lost``: a prefork child that dies puts its
  message back instead of acking it.
- ``visibility_timeout`` (set in all three places) is above the longest task, so Redis never
  redelivers a running window on its own. A SIGKILLed worker's window comes back much earlier through
  the database lease and the sweep (``workers.sweeper``), not through the visibility timeout; the
  sweep also drops the message it left unacked once its work is done (``workers.unacked``), so
  Redis does not deliver it again 6 h later.
- Soft shutdown plus ``REMAP_SIGTERM=SIGQUIT`` (set by ``voxbatch worker``): SIGTERM gives running
  tasks a few seconds, then restores their messages to the queue at once.
- Events on and ``task_send_sent_event`` so Flower shows queued tasks too.

Task names (``voxbatch.split|window|overall|reduce|sweep``) carry the job id as their first argument, so
Flower's search finds every task of a job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, platforms
from celery.apps.worker import Worker as _CeleryWorker
from celery.concurrency.thread import TaskPool as _CeleryThreadPool

from jobs.settings import Settings, get_settings
from workers.broker_transport import REDIS_TRANSPORT
from workers.queues import (  # noqa: F401  (re-exported: the names a worker serves)
    ANNOUNCE,
    CPU_QUEUE,
    GPU_QUEUE,
    OVERALL,
    PROCEEDINGS,
    QUEUES,
    REDUCE,
    ROUTES,
    SPLIT,
    SWEEP,
    WEBHOOK,
    WINDOW,
)
from workers.worker_events import EVENTS

log = logging.getLogger(__name__)

# Longest task: a 30-minute window whose requests each may take request_timeout_s (30 min), plus
# re-cuts. Redis redelivers anything unacked for this long, so it must stay above every task.
VISIBILITY_TIMEOUT_S = 6 * 3600
# Transient retries wait at most this long; a retry is an unacked ETA message, so it must stay well
# below the visibility timeout or the retry itself would be redelivered.
RETRY_BACKOFF_MAX_S = 300
# How long SIGTERM lets running tasks finish before their messages go back to the queue.
SOFT_SHUTDOWN_S = 5.0
RESULT_EXPIRES_S = 24 * 3600


def result_backend_url(broker_url: str) -> str:
    """The broker's Redis, next database number: results never share keys with queues."""
    parts = urlsplit(broker_url)
    if not parts.scheme.startswith("redis"):
        return broker_url
    path = parts.path.strip("/")
    db = int(path) if path.isdigit() else 0
    return urlunsplit((parts.scheme, parts.netloc, f"/{(db + 1) % 16}", parts.query, ""))


def broker_transport(broker_url: str) -> str | None:
    """Our Redis transport (workers.broker_transport) for ``redis://``; kombu's own for anything else."""
    return REDIS_TRANSPORT if urlsplit(broker_url).scheme == "redis" else None


def broker_transport_options() -> dict[str, Any]:
    """The broker's transport options: what every worker and publisher of voxbatch is configured with
    (the sweep reads kombu's key names for the unacked set from them, ``workers.unacked``)."""
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # Publishing while Redis restarts: keep trying instead of failing the task that enqueues.
        "max_retries": 15,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    }


def celery_config(settings: Settings) -> dict[str, object]:
    transport = broker_transport_options()
    return {
        "broker_url": settings.broker_url,
        "broker_transport": broker_transport(settings.broker_url),
        "result_backend": result_backend_url(settings.broker_url),
        # The visibility timeout is a transport option: a top-level key would be ignored (an
        # unknown setting; tests/security/test_workers.py checks every key against Celery's own).
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_acks_late": True,
        "task_acks_on_failure": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": SOFT_SHUTDOWN_S,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": RESULT_EXPIRES_S,
        "result_extended": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 15,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        "task_default_queue": CPU_QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "broker_channel_error_retry": True,
    }


class ThreadsPool(_CeleryThreadPool):
    """Celery's threads pool, able to go through a cold shutdown.

    Celery 5.7's cold shutdown cancels running tasks with ``terminate_job``, which the threads pool
    does not implement: the worker dies with NotImplementedError before it restores its unacked
    messages, so SIGTERM would strand running windows until the visibility timeout. A thread cannot
    be killed; doing nothing lets the shutdown go on and put the messages back on the queue (the
    window's lease is released by ``workers.tasks`` when the shutdown starts).
    """

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        log.warning("cold shutdown: a running task's message goes back to the queue")


THREADS_POOL = f"{__name__}:ThreadsPool"

# Run when a stop signal arrives, before Celery's soft shutdown starts waiting (workers.tasks
# registers the one that gives back the leases of running windows and requeues them).
STOP_HOOKS: list[Callable[[], None]] = []
STOP_HOOK_TIMEOUT_S = 3.0


# A worker whose consumer died (Celery's "Unrecoverable error": an exception out of the consumer that is
# not a connection error) stops, and that stop waits for the running tasks (the threads pool joins its
# threads) and can hang in kombu's teardown: the process stays up and takes nothing (issue 21). It
# must exit so that its supervisor starts a fresh one: past this bound it exits at once.
UNRECOVERABLE_EXIT_S = SOFT_SHUTDOWN_S + STOP_HOOK_TIMEOUT_S + 5.0


class VoxbatchWorker(_CeleryWorker):
    """Celery's worker program, handing running windows back as soon as a stop signal arrives, and
    exiting (non-zero, within ``UNRECOVERABLE_EXIT_S``) when its consumer died.

    Celery announces ``worker_shutting_down`` only after its soft shutdown has waited
    (``worker_soft_shutdown_timeout``) for running tasks: too late to let another worker take a
    long window at once. Wrapping the handlers Celery installed runs our hooks first.
    """

    def install_platform_tweaks(self, worker: Any) -> None:
        super().install_platform_tweaks(worker)
        for name in ("SIGTERM", "SIGQUIT", "SIGINT"):
            handler = platforms.signals[name]
            if callable(handler):
                platforms.signals[name] = _hooks_first(handler)

    def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
        # WorkController.start calls stop(exitcode=EX_FAILURE) after an unrecoverable error.
        if exitcode == platforms.EX_FAILURE and not in_sighandler:
            log.critical(
                "the worker's consumer died: running windows are handed back and the process exits"
                " within %.0f s so that its supervisor starts a fresh one",
                UNRECOVERABLE_EXIT_S,
            )
            _exit_after(UNRECOVERABLE_EXIT_S, platforms.EX_FAILURE)
            run_stop_hooks()
        super().stop(in_sighandler=in_sighandler, exitcode=exitcode)


def _exit_after(delay_s: float, exitcode: int) -> None:
    def hard_exit() -> None:
        log.critical("the worker did not stop within %.0f s: exiting now", delay_s)
        logging.shutdown()
        os._exit(exitcode)

    timer = threading.Timer(delay_s, hard_exit)
    timer.daemon = True
    timer.start()


_hooks_fired = threading.Event()


def run_stop_hooks() -> None:
    """Run ``STOP_HOOKS`` once per process, in a thread, waiting at most ``STOP_HOOK_TIMEOUT_S``."""
    if _hooks_fired.is_set():
        return
    _hooks_fired.set()

    def run_hooks() -> None:
        for hook in STOP_HOOKS:
            try:
                hook()
            except Exception:
                log.exception("stop hook %s failed", hook)

    # In a thread: a signal handler interrupts the main thread wherever it is, possibly inside a
    # lock the hooks need (database pool, producer pool).
    worker = threading.Thread(target=run_hooks, name="voxbatch-stop-hooks", daemon=True)
    worker.start()
    worker.join(STOP_HOOK_TIMEOUT_S)


def _hooks_first(handler: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        run_stop_hooks()
        return handler(*args)

    wrapped.__name__ = getattr(handler, "__name__", "worker_stop")
    return wrapped


def make_celery(settings: Settings) -> Celery:
    app = Celery("voxbatch", include=["workers.tasks"], events=EVENTS)
    app.conf.update(celery_config(settings))
    app.Worker = app.subclass_with_self(VoxbatchWorker)
    return app


# The app `celery -A workers.celery_app` (what `voxbatch worker` runs) serves; a worker process is
# configured by its environment. Processes that only enqueue build theirs from the Settings they
# are given (``workers.dispatch.Dispatcher``).
app = make_celery(get_settings())
