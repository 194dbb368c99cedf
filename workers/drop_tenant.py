"""Which tenant a drop-folder recording belongs to: ``VOXBATCH_DROP_TENANT`` (``drop``), or the
tenant its sidecar names, which must exist (``voxbatch keys create NAME`` made it).

The drop folder is a tenant like the API's: its jobs share the GPUs fairly with theirs, count
against its own limits (``jobs.admission.tenant_limits``) and, with a key for that tenant, are
listed by ``GET /v1/jobs``. Whoever may write to the inbox may name any existing tenant: the inbox
is the operator's, not a tenant's (docs/security.md).
"""

from __future__ import annotations

from jobs.db import Database
from jobs.errors import InputError
from jobs.settings import Settings
from jobs.tenants import tenant_exists


def drop_tenant(settings: Settings, db: Database, named: str | None, sidecar: str = "the sidecar") -> str:
    """The tenant for a recording whose sidecar names ``named`` (None: the drop folder's own)."""
    if named is None or not named.strip():
        return settings.drop_tenant
    name = named.strip()
    if name == settings.drop_tenant:
        return name
    if not tenant_exists(db, name):
        raise InputError(
            f"{sidecar} names the tenant {name[:100]!r}, which does not exist; create it with "
            f"`voxbatch keys create {name[:100]}`, or leave 'tenant' out for {settings.drop_tenant!r}"
        )
    return name
