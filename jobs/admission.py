"""Whether a new job may be taken: the recording's length and the tenant's load, checked after
ffprobe and before the job row is written (``create_job`` calls ``admit``).

- ``VOXBATCH_MAX_DURATION_HOURS``: the longest recording, per job (an InputError: 422, exit 2).
- ``VOXBATCH_MAX_ACTIVE_JOBS_PER_TENANT`` and ``VOXBATCH_MAX_QUEUED_HOURS_PER_TENANT``: a tenant's
  jobs not yet ended, and the hours of audio in them (``TooBusy``: 429 with Retry-After). Jobs
  without a tenant (``voxbatch run``, ``submit``) have only the per-job limit.
- The drop folder's tenant (``VOXBATCH_DROP_TENANT``, ``drop``) has its own, larger limits
  (``VOXBATCH_DROP_MAX_ACTIVE_JOBS``, ``VOXBATCH_DROP_MAX_QUEUED_HOURS``): a conference's recordings
  land at once, and the inbox itself is the queue (a recording refused here stays there and is
  taken at a later scan). Fair share, not admission, keeps it from starving API tenants.

Two requests of one tenant at the same instant can both pass the per-tenant check; the limits
bound the load to within a request or two, which is what they are for.
"""

from __future__ import annotations

from jobs.errors import InputError, TooBusy
from jobs.runtime import Runtime
from jobs.settings import Settings

RETRY_JOBS_S = 60.0
RETRY_HOURS_S = 300.0


def admit_length(settings: Settings, duration_s: float | None) -> None:
    """The per-job limit alone (``voxbatch run`` checks it before opening the database)."""
    if duration_s is not None and duration_s > settings.max_duration_hours * 3600.0:
        raise InputError(
            f"the recording lasts {duration_s / 3600:.2f} h; this server takes recordings of at most "
            f"{settings.max_duration_hours:g} h (VOXBATCH_MAX_DURATION_HOURS)"
        )


def admit(rt: Runtime, duration_s: float | None, tenant: str | None) -> None:
    settings = rt.settings
    admit_length(settings, duration_s)
    if tenant is None:
        return
    max_jobs, max_hours, jobs_var, hours_var = tenant_limits(settings, tenant)
    active, queued_s = rt.store.tenant_load(tenant)
    if active >= max_jobs:
        raise TooBusy(
            f"you have {active} jobs in progress, the most this server runs per tenant "
            f"({jobs_var}); submit again when one has ended",
            RETRY_JOBS_S,
        )
    if duration_s is not None and queued_s + duration_s > max_hours * 3600.0:
        raise TooBusy(
            f"you have {queued_s / 3600:.1f} h of audio queued; with this recording it would be over "
            f"{max_hours:g} h ({hours_var}); submit again when some have finished",
            RETRY_HOURS_S,
        )


def tenant_limits(settings: Settings, tenant: str) -> tuple[int, float, str, str]:
    """Most active jobs, most queued hours, and the settings that hold them, for ``tenant``."""
    if tenant == settings.drop_tenant:
        return (
            settings.drop_max_active_jobs,
            settings.drop_max_queued_hours,
            "VOXBATCH_DROP_MAX_ACTIVE_JOBS",
            "VOXBATCH_DROP_MAX_QUEUED_HOURS",
        )
    return (
        settings.max_active_jobs_per_tenant,
        settings.max_queued_hours_per_tenant,
        "VOXBATCH_MAX_ACTIVE_JOBS_PER_TENANT",
        "VOXBATCH_MAX_QUEUED_HOURS_PER_TENANT",
    )
