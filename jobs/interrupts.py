"""Waiting so that a Ctrl-C still lands.

A process-directed signal (SIGINT) may be taken by any thread; Python runs its handler in the main
thread, and only when that thread next wakes. A main thread waiting with no timeout for a future
or a thread that waits on an answer the model server holds would never wake, and the interrupt
would never land (``voxbatch run`` then ignored Ctrl-C). Every wait of the main thread on the
windows' work is therefore a loop of short timed waits.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable
from typing import Any

SIGNAL_CHECK_S = 0.5


def wait_interruptibly(futures: Iterable[concurrent.futures.Future[Any]]) -> None:
    """Return when every future is done, waking every ``SIGNAL_CHECK_S`` for signals."""
    pending = set(futures)
    while pending:
        _, pending = concurrent.futures.wait(pending, timeout=SIGNAL_CHECK_S)


def join_interruptibly(thread: threading.Thread) -> None:
    """``thread.join()``, waking every ``SIGNAL_CHECK_S`` for signals."""
    while thread.is_alive():
        thread.join(SIGNAL_CHECK_S)
