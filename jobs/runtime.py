"""What the pipeline's steps need, built once per process at the edge (CLI, worker, API).

``on_job_end`` are what follows a job's ending in the process that ended it (the outbox relayed, the
gpu queue metered): the edge that builds the Runtime installs them, and ``jobs.steps.ending.job_ended``
runs them on every path that ends a job, so the core never imports the workers. The ending's
announcement (webhook, drop-folder outbox) is not a hook: ``announces`` puts its step into the outbox
in the ending's own transaction. ``on_window_done`` likewise after each window
(the ``window.done`` webhook).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from jobs.db import Database
from jobs.engine import AudioTool, Engine
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.store import JobStore


@dataclass
class Runtime:
    db: Database
    storage: Storage
    audio: AudioTool
    settings: Settings
    engine_factory: Callable[[], Engine]
    on_job_end: list[Callable[[Runtime, str], None]] = field(default_factory=list)
    # Whether an ending job has something to announce besides a webhook (a drop-folder recording's
    # outbox result), asked inside the transaction that ends it (``JobStore.transition``), which
    # then puts the job's ``announce`` step into the outbox. None: nothing is ever announced (a
    # local run: no broker, no cpu worker).
    announces: Callable[[Session, str], bool] | None = None
    # What a window's end sets off besides the next steps (the ``window.done`` webhook): called
    # with the job id and the window's index once the window is marked done; must not raise.
    on_window_done: list[Callable[[Runtime, str, int], object]] = field(default_factory=list)
    # What deleting a job removes outside the core's own storage (its copies in the drop folder's
    # outbox): called with the job id once its own files are gone and before its rows go; raising
    # stops the deletion, so a retry removes the rest.
    on_job_deleted: list[Callable[[Runtime, str], object]] = field(default_factory=list)
    # What sends steps to the broker (``workers.dispatch.Dispatcher``): one per Runtime, built by
    # ``workers.dispatch.dispatcher`` on first use; ``jobs`` never calls it.
    dispatcher: Any = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def store(self) -> JobStore:
        return JobStore(self.db)

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self.engine_factory()
            return self._engine
