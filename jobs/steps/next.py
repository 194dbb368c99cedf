"""What must run next for a job, and why: the one answer the task layer, ``retry``, the sweep and
the local run all use.

``after`` names the step that just finished, because the answers differ: after a split every
pending window is due; after a window only the overall summary or the reduce can be (its siblings
have their own messages), and only for the one caller the barrier lets through; after the overall
summary, the reduce; after the reduce of a job in a collection, the collection's proceedings
(``jobs/proceedings.py``); with no ``after`` (resume, the sweep of a job whose messages were lost
or whose worker died, a local run) everything missing is due, the proceedings of a succeeded job
that no build has listed included. Each step carries the reason it is due (for logs); steps
compare equal whatever the reason.

Which of the due windows goes to the gpu queue when is not decided here but by the meter
(``workers.meter``); the local run takes them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jobs.models import Job, JobStatus
from jobs.runtime import Runtime
from jobs.steps.overall import needs_overall

# "announce" (a job's end sent to the drop-folder outbox and its webhook) is queued by the ending itself,
# in its transaction (JobStore.transition), never answered here.
StepKind = Literal["split", "window", "overall", "reduce", "proceedings", "announce"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    job_id: str
    index: int | None = None  # the window's, for "window"
    reason: str = field(default="", compare=False)


def next_steps(rt: Runtime, job_id: str, after: StepKind | None = None) -> list[Step]:
    job = rt.store.get(job_id)
    if job.status == JobStatus.succeeded and job.collection_id:
        if after == "reduce":
            return [Step("proceedings", job_id, reason="a job of its collection succeeded")]
        if after is None and job.proceedings_at is None:
            return [Step("proceedings", job_id, reason="succeeded, no build of its proceedings lists it")]
    if JobStatus(job.status).finished:
        return []
    if job.status == JobStatus.reducing:
        if after == "overall":
            return [Step("reduce", job_id, reason="the overall summary is stored")]
        # Claimed already: due only when nobody else was told (resume, lost message).
        return [] if after is not None else [_reducing(rt, job, "reducing, nothing running")]
    if job.windows_total is None:
        return [] if after is not None else [Step("split", job_id, reason=f"{job.status}, not split yet")]
    pending = [] if after == "window" else rt.store.pending_windows(job_id)
    if pending:
        why = "cut by the split" if after == "split" else "not done yet"
        return [Step("window", job_id, index, reason=why) for index in pending]
    if rt.store.claim_reduce(job_id):
        return [_reducing(rt, rt.store.get(job_id), "every window done; the barrier let this caller through")]
    return []


def _reducing(rt: Runtime, job: Job, why: str) -> Step:
    """A reducing job's next step: its overall summary where that is a model call still to make
    (a gpu worker's, ``jobs/steps/overall.py``), else the reduce."""
    if needs_overall(rt, job):
        return Step("overall", job.id, reason=f"{why}; the overall summary is a model call")
    return Step("reduce", job.id, reason=why)
