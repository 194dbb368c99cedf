"""The job state machine: which state may follow which.

Job states move only along ``TRANSITIONS``::

    queued ──► splitting ──► transcribing ──► reducing ──► succeeded
       │  ▲        │ ▲            │    ▲          │
       │  └────────┘ └(redelivery)│    └──────────┘ (a re-run takes an interrupted reduce again)
       └─────────────┴────────────┴───────────────┴──► failed | cancelled ──► queued | transcribing

A caller names the states it expects to move from; a pair not in the table raises
``InvalidTransition`` (a bug, not a race), while a job that has meanwhile moved elsewhere (a cancel
won) makes the UPDATE match no row and the call returns False.
"""

from __future__ import annotations

from collections.abc import Iterable

from jobs.models import JobStatus

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.splitting, S.failed, S.cancelled}),
    # splitting → splitting: a redelivered split starts again; → queued: a re-run after a crash.
    S.splitting: frozenset({S.splitting, S.transcribing, S.queued, S.failed, S.cancelled}),
    S.transcribing: frozenset({S.reducing, S.failed, S.cancelled}),
    # reducing → transcribing: a re-run whose previous process died while reducing.
    S.reducing: frozenset({S.reducing, S.succeeded, S.transcribing, S.failed, S.cancelled}),
    S.succeeded: frozenset(),
    S.failed: frozenset({S.queued, S.transcribing}),
    S.cancelled: frozenset({S.queued, S.transcribing}),
}
ACTIVE = (S.queued, S.splitting, S.transcribing, S.reducing)
ENDED = (S.succeeded, S.failed, S.cancelled)


class InvalidTransition(RuntimeError):
    """A state change the table does not allow: a programming error."""


def check_transition(sources: Iterable[JobStatus], target: JobStatus) -> None:
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise InvalidTransition(f"a job may not go from {source} to {target}")
