"""Who is calling: ``Authorization: Bearer KEY`` on every /v1 call, resolved to a tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import keys
from jobs.runtime import Runtime

bearer = HTTPBearer(auto_error=False, description="An API key from `voxbatch keys create NAME`.")


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def current_tenant(
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401, "send your API key as 'Authorization: Bearer KEY'", headers={"WWW-Authenticate": "Bearer"}
        )
    tenant = keys.verify_key(rt.db, credentials.credentials)
    if tenant is None:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
