"""Whose work a model request is: the tenant and class it is charged to, and its place in line.

The window step sets the share of the thread that sends a request (``charged_to``); the process's
request scheduler (``workers/engines/scheduler.py``) reads it to decide which request goes to the
model server next: ``interactive`` before ``batch``, tenants of a class by fair share of audio
seconds, and within one tenant earlier jobs' earlier windows first, so windows finish one by one
instead of all together at the end. A contextvar, because the Engine protocol carries audio and
prompts, not who asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from jobs.models import Job, Priority

PRIORITY_RANK = {Priority.interactive: 0, Priority.batch: 1}
# An interactive job this long or shorter is a clip: while its requests are out, the request
# scheduler holds the other work's new requests (workers/engines/scheduler.py). One window.
CLIP_S = 30 * 60.0


@dataclass(frozen=True)
class Share:
    tenant: str = ""  # "" for work with no tenant (a local run)
    priority: Priority = Priority.interactive
    # The place in the tenant's line: (job created at, window index); smaller goes first.
    order: tuple[str, int] = ("", 0)
    short: bool = False  # the job's audio is at most CLIP_S

    @property
    def rank(self) -> int:
        return PRIORITY_RANK[self.priority]

    @property
    def clip(self) -> bool:
        """A short interactive job: someone is waiting on it."""
        return self.short and self.priority == Priority.interactive


UNCHARGED = Share()

_current: ContextVar[Share] = ContextVar("voxbatch_share", default=UNCHARGED)


def share_of(job: Job, window_index: int = 0) -> Share:
    return Share(
        tenant=job.tenant or "",
        priority=Priority(job.priority or Priority.interactive),
        order=(job.created_at.isoformat() if job.created_at else "", window_index),
        short=job.duration_s is not None and job.duration_s <= CLIP_S,
    )


def current_share() -> Share:
    return _current.get()


@contextmanager
def charged_to(share: Share) -> Iterator[None]:
    """Requests sent by this thread inside the block are charged to ``share``."""
    token = _current.set(share)
    try:
        yield
    finally:
        _current.reset(token)
