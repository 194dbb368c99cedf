"""Retrying a job, and resetting one whose previous local run was interrupted."""

from __future__ import annotations

import logging

from jobs.errors import InputError
from jobs.models import Job, JobStatus
from jobs.runtime import Runtime

log = logging.getLogger(__name__)


def retry(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    """Put a failed or cancelled job back; windows already done are kept. Enqueue with ``next``."""
    job = rt.store.get(job_id, tenant)
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise InputError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
    rt.store.reset_windows(job_id, only_running=False)
    target = JobStatus.queued if job.windows_total is None else JobStatus.transcribing
    rt.store.transition(
        job_id,
        [JobStatus.failed, JobStatus.cancelled],
        target,
        error=None,
        finished_at=None,
        reduce_claimed=False,
        attempt=job.attempt + 1,
    )
    log.info("job %s: retry requested", job_id)
    return rt.store.get(job_id)


def prepare_rerun(rt: Runtime, job: Job) -> Job:
    """A job found by fingerprint: let a failed or half-done local run continue where it stopped."""
    if job.status == JobStatus.failed:
        return retry(rt, job.id)
    if job.status == JobStatus.reducing:
        # The previous process died while reducing: the reduce is idempotent, take it again.
        rt.store.transition(job.id, [JobStatus.reducing], JobStatus.transcribing, reduce_claimed=False)
    if job.status == JobStatus.splitting:
        rt.store.transition(job.id, [JobStatus.splitting], JobStatus.queued)
    # A local run is the only worker: leases left by a killed process are stale.
    rt.store.reset_windows(job.id, only_running=True)
    return rt.store.get(job.id)
