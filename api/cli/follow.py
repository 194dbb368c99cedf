"""``--follow`` (``voxbatch wait``, ``voxbatch run``): a job's segments printed as they are stored,
``[00:12:31] text``, from the same events as ``GET /v1/jobs/{id}/events`` (jobs/events.py), read
from the database and storage directly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import click

from jobs.captions import stamped
from jobs.events import Cursor, Event, next_events
from jobs.models import Job
from jobs.runtime import Runtime

POLL_S = 0.25


def line_of(event: Event) -> str | None:
    """What ``--follow`` prints for an event: a segment's line (nothing for the others)."""
    if event.kind == "segment":
        data = event.data
        who = f"{data['speaker']}: " if data.get("speaker") else ""
        return stamped(float(data["start_s"]), who + str(data["text"]))
    return None


class Follower:
    """Prints a job's segments from where it left off; ``step`` prints what is new."""

    def __init__(self, rt: Runtime, job_id: str, echo: Callable[[str], None] = click.echo) -> None:
        self.rt = rt
        self.job_id = job_id
        self.echo = echo
        self.cursor = Cursor()

    def step(self) -> tuple[Job, bool]:
        """Print the events stored since the last step; the job, and True once it has ended and
        every one of its events was printed."""
        while True:
            job = self.rt.store.get(self.job_id)
            events, self.cursor, over = next_events(self.rt, job, self.cursor)
            for event in events:
                line = line_of(event)
                if line is not None:
                    self.echo(line)
            if over or not events:
                return job, over

    def until_over(self, stop: threading.Event, deadline: float | None = None) -> Job | None:
        """Steps until the job's events are over (the job, ended), ``stop`` is set or the deadline
        (monotonic) passes (None)."""
        while not stop.is_set():
            job, over = self.step()
            if over:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return None
            stop.wait(POLL_S)
        return None


def follow_in_background(rt: Runtime, job_id: str) -> tuple[threading.Thread, threading.Event, Follower]:
    """A thread printing the job's segments while this process runs it (``voxbatch run --follow``)."""
    follower = Follower(rt, job_id)
    stop = threading.Event()
    thread = threading.Thread(target=follower.until_over, args=(stop,), name="follow", daemon=True)
    thread.start()
    return thread, stop, follower
