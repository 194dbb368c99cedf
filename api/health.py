"""Liveness, readiness and metrics endpoints.

``/healthz`` and ``/readyz`` need no key (Kubernetes probes call them): they say ok or which
dependency is unreachable, never why (no exception text, no addresses). ``/metrics`` holds every
tenant's job counts: it needs ``Authorization: Bearer <VOXBATCH_METRICS_TOKEN>``, the operator's
token, and answers 401 to everyone while that token is unset.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from api import metrics
from api.auth import RuntimeDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


def _check_database(rt: Any) -> None:
    rt.db.ping()


def _check_broker(rt: Any) -> None:
    import redis

    client = redis.Redis.from_url(rt.settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _check_storage(rt: Any) -> None:
    rt.storage.exists("readyz-probe")


@router.get(
    "/readyz",
    responses={503: {"description": "a dependency is unreachable; the body names which"}},
)
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Database, broker and object storage reachable."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", _check_database),
        ("broker", _check_broker),
        ("storage", _check_storage),
    ):
        try:
            check(rt)
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readyz: %s unreachable: %s: %s", name, exc.__class__.__name__, str(exc)[:200])
            checks[name] = "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


def _operator(request: Request, rt: Any) -> None:
    token = rt.settings.metrics_token
    sent = request.headers.get("authorization", "")
    scheme, _, value = sent.partition(" ")
    if (
        not token
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(value.strip().encode(), token.encode())
    ):
        raise HTTPException(
            401,
            "send the operator token (VOXBATCH_METRICS_TOKEN) as 'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"description": "no or wrong operator token"}},
)
def prometheus(request: Request, rt: RuntimeDep) -> Response:
    """Prometheus metrics: jobs by state, window durations, queue depth (operator token needed)."""
    _operator(request, rt)
    body = metrics.render(request.app.state.metrics)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
