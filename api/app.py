"""The FastAPI app: routers, one place mapping voxbatch errors to HTTP statuses, the web page.

Run it with ``voxbatch api`` (or ``uvicorn api.app:create_app --factory``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import (
    collection_routes,
    event_routes,
    health,
    job_routes,
    metrics,
    recording_routes,
    search_routes,
    tenant_routes,
    upload_routes,
)
from api.job_routes import DocumentNotReady
from api.limits import UploadSlots
from api.stream_slots import StreamSlots
from api.upload_stream import RequestTimedOut, UploadTooLarge
from jobs.errors import Conflict, InputError, NotFound, PermanentError, TooBusy, TransientError, VoxbatchError
from jobs.idempotency import IdempotencyInProgress
from jobs.runtime import Runtime
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

DESCRIPTION = """
Long recordings in, finished documents out.

**Authentication**: every `/v1` call needs `Authorization: Bearer KEY` (create one with
`voxbatch keys create NAME`). Jobs of other API keys' tenants answer 404.

**Webhooks**: a job created with `webhook_url` gets a `POST` of the job as JSON when it ends
(succeeded, failed or cancelled), with headers `X-Voxbatch-Event: job.finished`,
`X-Voxbatch-Timestamp: <unix seconds>` and `X-Voxbatch-Signature: sha256=<hex>`, the HMAC-SHA256 of
the raw body under your tenant's webhook secret. The body repeats the timestamp, so it is signed
too. Failed deliveries (5xx, 408, 429, timeouts) are retried with exponential backoff; each attempt
is listed in the job's `webhook_attempts`. Webhook hosts must resolve to public addresses.
"""

# Most specific first: Starlette looks handlers up along the exception's MRO anyway.
STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (UploadTooLarge, 413),
    (RequestTimedOut, 408),
    (IdempotencyInProgress, 409),
    (TooBusy, 429),
    (NotFound, 404),
    (DocumentNotReady, 409),
    (Conflict, 409),
    (InputError, 422),
    (PermanentError, 422),
    (TransientError, 503),
    (VoxbatchError, 422),
)


def _problem(status: int) -> object:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path[:200], exc)
        headers = {}
        if isinstance(exc, TooBusy):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if status == 408:
            headers["Connection"] = "close"
        return JSONResponse({"detail": str(exc)[:1000]}, status_code=status, headers=headers)

    return handler


async def _value_error(request: Request, exc: Exception) -> JSONResponse:
    # e.g. an unsafe storage key built from a path parameter
    return JSONResponse({"detail": str(exc)[:500]}, status_code=422)


def _short(value: object, limit: int = 100) -> object:
    """An echoed value cut to ``limit`` characters (a 5,000-character id is not sent back)."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [_short(str(p), 50) for p in e.get("loc", ())],
            "msg": _short(str(e.get("msg", "")), 200),
            "input": _short(e.get("input") if isinstance(e.get("input"), str) else None),
        }
        for e in exc.errors()[:5]
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"detail": _short(str(exc.detail), 300)}, status_code=exc.status_code, headers=exc.headers
    )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    if runtime is None:
        from workers.runtime import build_runtime

        runtime = build_runtime(settings or get_settings())
    app = FastAPI(
        title="voxbatch",
        version="1",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Recordings becoming documents."},
            {"name": "uploads", "description": "Presigned S3 multipart uploads for large files."},
            {"name": "collections", "description": "Recordings that belong together, and their proceedings."},
            {"name": "search", "description": "Words and phrases across your transcripts."},
            {"name": "tenant", "description": "Your own settings: how long finished jobs are kept."},
            {"name": "health", "description": "Probes and Prometheus metrics."},
        ],
    )
    app.state.runtime = runtime
    app.state.metrics = metrics.registry_for(runtime)
    for exc_type, status in STATUS_OF:
        app.add_exception_handler(exc_type, _problem(status))  # type: ignore[arg-type]
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.state.upload_slots = UploadSlots.from_settings(runtime.settings)
    app.state.event_streams = StreamSlots.from_settings(runtime.settings)
    app.state.metrics.register(event_routes.OpenStreams(app.state.event_streams))
    app.include_router(job_routes.router)
    app.include_router(event_routes.router)
    app.include_router(upload_routes.router)
    app.include_router(recording_routes.router)
    app.include_router(collection_routes.router)
    app.include_router(search_routes.router)
    app.include_router(tenant_routes.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={
                # Documents are user content: nothing but our own script may run on the page.
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return app
