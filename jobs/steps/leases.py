"""Leases and heartbeats kept by a thread while a step works.

A window holds a lease in the database while it runs; a split or reduce keeps its job's
``updated_at`` fresh. A worker killed with SIGKILL stops renewing, and the sweep
(``workers.sweeper``) hands its work to another worker once one lease has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from jobs.models import Window
from jobs.runtime import Runtime

log = logging.getLogger(__name__)


@contextmanager
def every(period_s: float, fn: Callable[[], None], name: str) -> Iterator[None]:
    """Call ``fn`` every ``period_s`` in a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            try:
                fn()
            except Exception:
                # A missed beat is survivable (the next one may work); a dead thread is not.
                log.warning("%s failed", name, exc_info=True)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def renew_period_s(rt: Runtime) -> float:
    return max(1.0, rt.settings.lease_seconds / 3)


class ProgressClock:
    """When a window last made progress (a request of it answered); thread-safe enough: a float
    written whole."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def stalled_for(self) -> float:
        return time.monotonic() - self.last


def lease_kept(
    rt: Runtime, window: Window, owner: str, clock: ProgressClock | None = None
) -> AbstractContextManager[None]:
    """Renew the lease while the window runs and makes progress, so only a dead worker's window,
    or one none of whose requests was answered for ``window_stall_s``, is taken over by the sweep."""
    name = f"lease-{window.job_id}-{window.index}"
    return every(renew_period_s(rt), lease_renewal(rt, window, owner, clock), name)


def lease_renewal(
    rt: Runtime, window: Window, owner: str, clock: ProgressClock | None = None
) -> Callable[[], None]:
    """One beat of ``lease_kept``: renew, unless the window has stalled (then say so, once)."""
    warned = threading.Event()

    def renew() -> None:
        if clock is not None and clock.stalled_for() > rt.settings.window_stall_s:
            if not warned.is_set():
                warned.set()
                log.warning(
                    "job %s: window %d made no progress for %.0f s; its lease is left to expire",
                    window.job_id,
                    window.index,
                    clock.stalled_for(),
                )
            return
        rt.store.renew_lease(window.id, owner, rt.settings.lease_seconds)

    return renew


def job_heartbeat(rt: Runtime, job_id: str) -> AbstractContextManager[None]:
    """Keep the job's ``updated_at`` fresh while a split, a reduce or a proceedings step runs, so
    the sweep leaves it be."""
    return every(renew_period_s(rt), lambda: rt.store.heartbeat(job_id), f"heartbeat-{job_id}")
