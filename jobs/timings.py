"""How long each stage of a job took, in seconds: one definition for the CLI and the API.

A stage that has not run (yet) is None. ``windows`` runs from the end of the split to the start of
the reduce: the time the job spent waiting for and running its windows, whatever the workers did.
"""

from __future__ import annotations

from datetime import datetime

from jobs.models import Job

STAGES = ("queued", "split", "windows", "reduce", "total")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def job_timings(job: Job) -> dict[str, float | None]:
    return {
        "queued": seconds_between(job.created_at, job.split_started_at),
        "split": seconds_between(job.split_started_at, job.split_finished_at),
        "windows": seconds_between(job.split_finished_at, job.reduce_started_at),
        "reduce": seconds_between(job.reduce_started_at, job.finished_at if job.reduce_started_at else None),
        "total": seconds_between(job.created_at, job.finished_at),
    }
