"""Waiting so that a Ctrl-C still lands, and only where it can land.

A process-directed signal (SIGINT) may be taken by any thread; Python runs its handler in the main
thread, and only when that thread next wakes. A main thread waiting with no timeout for a future
or a thread that waits on an answer the model server holds would never wake, and the interrupt
would never land (``voxbatch run`` then ignored Ctrl-C). Every wait of the main thread on the
windows' work is therefore a loop of short timed waits.

Any other thread waits without a timeout: no signal handler ever runs there, so waking it would
only cost. It costs a lot: a gpu worker holds dozens of windows, each with a thread per segment
waiting on its request (2,000 threads at 64 windows), and every wake takes the GIL from the one
thread that does the work, the request scheduler's event loop. Woken every half second, those
threads made 4,000 GIL handovers a second; the worker spent its time in the kernel and the
model server saw its connections time out (bench/fleet.py, 12 x 2 h).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable
from typing import Any

SIGNAL_CHECK_S = 0.5


def _signal_check_s() -> float | None:
    """How long a wait may sleep before looking for signals: only the main thread runs handlers."""
    return SIGNAL_CHECK_S if threading.current_thread() is threading.main_thread() else None


def wait_interruptibly(futures: Iterable[concurrent.futures.Future[Any]]) -> None:
    """Return when every future is done; in the main thread, waking every ``SIGNAL_CHECK_S`` for
    signals."""
    pending = set(futures)
    timeout = _signal_check_s()
    while pending:
        _, pending = concurrent.futures.wait(pending, timeout=timeout)


def join_interruptibly(thread: threading.Thread) -> None:
    """``thread.join()``; in the main thread, waking every ``SIGNAL_CHECK_S`` for signals."""
    timeout = _signal_check_s()
    while thread.is_alive():
        thread.join(timeout)
