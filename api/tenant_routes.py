"""/v1/tenant: the caller's own tenant settings; today its retention (finished jobs deleted after N
days by the sweep, jobs/retention.py), as ``voxbatch keys retention`` sets it from the server."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from api.auth import RuntimeDep, TenantDep
from api.limits import read_json_body
from api.schemas import Problem, Retention
from jobs import tenants
from jobs.errors import InputError
from jobs.limits import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS

router = APIRouter(prefix="/v1/tenant", tags=["tenant"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown one"},
}
# The body is read and checked here (one line per refusal), so its schema is given by hand.
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["retention_days"],
                    "additionalProperties": False,
                    "properties": {
                        "retention_days": {
                            "type": ["integer", "null"],
                            "minimum": MIN_RETENTION_DAYS,
                            "maximum": MAX_RETENTION_DAYS,
                            "description": "finished jobs deleted this many days after they end; null: kept",
                        }
                    },
                }
            }
        },
    }
}


@router.get("/retention", response_model=Retention, responses=ERRORS)
def get_retention(rt: RuntimeDep, tenant: TenantDep) -> Retention:
    """How many days your finished jobs are kept before the sweep deletes them (null: kept)."""
    return Retention(retention_days=tenants.get_retention(rt.db, tenant))


@router.put(
    "/retention",
    response_model=Retention,
    responses={
        **ERRORS,
        422: {"model": Problem, "description": "not a whole number of days in range, or null"},
    },
    openapi_extra=_BODY,
)
async def set_retention(request: Request, rt: RuntimeDep, tenant: TenantDep) -> Retention:
    """Delete your finished jobs (documents, segments, index rows, stored uploads) this many days
    after they end, from 1 to 3650; null keeps them. Applies at the sweep's next turn, to jobs that
    ended before the change too."""
    raw = await read_json_body(request, rt.settings)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past Python's stack
        raise InputError(
            'the body is not JSON; send {"retention_days": 30} or {"retention_days": null}'
        ) from exc
    if not isinstance(body, dict) or "retention_days" not in body:
        raise InputError('send {"retention_days": DAYS} (DAYS from 1 to 3650, or null to keep finished jobs)')
    unknown = sorted(str(k)[:40] for k in body if k != "retention_days")
    if unknown:
        raise InputError(f"unknown field(s): {', '.join(unknown[:5])}; only retention_days")
    days = body["retention_days"]
    problem = tenants.retention_problem(days)
    if problem:
        raise InputError(problem)
    tenants.set_retention(rt.db, tenant, days)
    return Retention(retention_days=days)
