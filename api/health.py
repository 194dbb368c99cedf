"""Liveness, readiness and metrics endpoints (no API key: probes and Prometheus call them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import metrics
from api.auth import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
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
            checks[name] = f"unreachable: {exc.__class__.__name__}: {str(exc)[:200]}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def prometheus(request: Request) -> Response:
    """Prometheus metrics: jobs by state, window durations, queue depth."""
    body = metrics.render(request.app.state.metrics)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
