"""A Ctrl-C taken by another thread still reaches a main thread that waits on the windows' work."""

from __future__ import annotations

import concurrent.futures
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.interrupts import join_interruptibly, wait_interruptibly

GUARD_S = 60.0  # only if the interrupt never lands: the wait ends and the test fails, not hangs


@pytest.fixture(autouse=True)
def _python_handles_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (KeyboardInterrupt), whatever an earlier test in this process
    installed (an in-process server or worker replaces it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_through_another_thread(waiting_in: str) -> threading.Event:
    """Once the main thread is blocked inside ``waiting_in``, deliver SIGINT to another thread
    (the kernel may pick any thread for a process-directed signal); the event is set once sent."""
    main = threading.main_thread().ident
    sent = threading.Event()

    def blocked() -> bool:
        frame = sys._current_frames().get(main or 0)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        return bool(names) and names[0] in ("wait", "_wait_for_tstate_lock") and waiting_in in names

    def deliver() -> None:
        polled = threading.Event()
        while not blocked():
            polled.wait(0.005)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        sent.set()

    threading.Thread(target=deliver, daemon=True).start()
    return sent


def test_a_wait_on_a_future_that_never_ends_is_interrupted() -> None:
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    guard = threading.Timer(GUARD_S, lambda: never.set_result("guard"))
    guard.start()
    try:
        sent = _interrupt_through_another_thread("wait_interruptibly")
        with pytest.raises(KeyboardInterrupt):
            wait_interruptibly([never])
        assert sent.is_set()
    finally:
        guard.cancel()
    assert not never.done()  # the interrupt ended the wait, not the guard


def test_a_join_on_a_thread_that_never_ends_is_interrupted() -> None:
    release = threading.Event()
    stuck = threading.Thread(target=lambda: release.wait(GUARD_S), daemon=True)
    stuck.start()
    try:
        sent = _interrupt_through_another_thread("join_interruptibly")
        with pytest.raises(KeyboardInterrupt):
            join_interruptibly(stuck)
        assert sent.is_set()  # and the join ended by the interrupt: the thread waits GUARD_S
    finally:
        release.set()


def test_a_thread_other_than_the_main_one_waits_without_waking(monkeypatch: pytest.MonkeyPatch) -> None:
    """No handler runs outside the main thread, so a worker thread's wait has no timeout: thousands
    of segment threads waking to look for signals would take the GIL from the request scheduler."""
    timeouts: list[float | None] = []
    real_wait = concurrent.futures.wait

    def recording_wait(fs: Any, timeout: float | None = None) -> Any:
        if threading.current_thread() is waiter:  # not another test's leftover thread
            timeouts.append(timeout)
        return real_wait(fs, timeout=timeout)

    monkeypatch.setattr(concurrent.futures, "wait", recording_wait)
    answer: concurrent.futures.Future[str] = concurrent.futures.Future()
    waiter = threading.Thread(target=wait_interruptibly, args=([answer],), name="waiter")
    waiter.start()
    answer.set_result("done")
    waiter.join(GUARD_S)
    assert not waiter.is_alive()
    assert timeouts and set(timeouts) == {None}
