"""/v1/collections: create, list, show (its jobs and its proceedings), proceedings files, delete,
and a manifest of recordings submitted at once."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api import job_routes, staging
from api.auth import RuntimeDep, TenantDep
from api.limits import read_json_body
from api.schemas import (
    CollectionCreate,
    CollectionList,
    CollectionOut,
    JobList,
    ManifestProblems,
    Problem,
    job_out,
)
from api.upload_stream import UploadTooLarge
from jobs import collections, proceedings, retention
from jobs import manifest as manifests
from jobs.errors import InputError, NotFound
from jobs.models import Collection
from jobs.options import JobOptions, parse_vocabulary
from jobs.runtime import Runtime

router = APIRouter(prefix="/v1/collections", tags=["collections"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown one"},
    404: {"model": Problem, "description": "no such collection for this API key"},
}


def collection_out(
    request: Request, rt: Runtime, row: Collection, *, with_jobs: bool = False
) -> CollectionOut:
    base = str(request.base_url).rstrip("/")
    out = CollectionOut(
        id=row.id,
        name=row.name,
        preset=row.preset,
        instructions=row.instructions,
        vocabulary=list(parse_vocabulary(row.vocabulary)),
        language=row.language,
        priority=row.priority,
        created_at=row.created_at,
    )
    if with_jobs:
        out.jobs = [job_out(j, base, rt.settings.flower_url) for j in rt.store.in_collection(row.id)]
        out.documents = {
            name: f"{base}/v1/collections/{row.id}/documents/{name}"
            for name in proceedings.built(rt.storage, row.id)
        }
    return out


@router.post(
    "",
    status_code=201,
    response_model=CollectionOut,
    responses={**ERRORS, 409: {"model": Problem, "description": "the name is taken"}},
)
async def create_collection(request: Request, rt: RuntimeDep, tenant: TenantDep) -> CollectionOut:
    """A collection and the options its jobs share; jobs join it with `collection` at submission."""
    raw = await read_json_body(request, rt.settings)
    try:
        body = CollectionCreate.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InputError(f"{where}: {str(first.get('msg', 'invalid'))[:200]}") from exc
    vocabulary = "\n".join(body.vocabulary) if isinstance(body.vocabulary, list) else body.vocabulary
    options = JobOptions(
        preset=body.preset,
        instructions=body.instructions,
        vocabulary=vocabulary,
        language=body.language,
        priority=body.priority.value if body.priority else None,
    )
    row = collections.create(rt.db, tenant, body.name, options)
    return collection_out(request, rt, row, with_jobs=True)


@router.get("", response_model=CollectionList, responses=ERRORS)
def list_collections(request: Request, rt: RuntimeDep, tenant: TenantDep) -> CollectionList:
    """Your collections, oldest first."""
    return CollectionList(
        collections=[collection_out(request, rt, c) for c in collections.list_for(rt.db, tenant)]
    )


@router.get("/{ref}", response_model=CollectionOut, responses=ERRORS)
def show_collection(request: Request, ref: str, rt: RuntimeDep, tenant: TenantDep) -> CollectionOut:
    """One collection (by id or name): its options, its jobs and its proceedings' documents."""
    return collection_out(request, rt, collections.get(rt.db, tenant, ref), with_jobs=True)


@router.get(
    "/{ref}/documents/{name}",
    responses={**ERRORS, 200: {"content": {"text/markdown": {}, "application/json": {}, "text/html": {}}}},
    response_class=Response,
)
def get_proceedings(ref: str, name: str, rt: RuntimeDep, tenant: TenantDep) -> Response:
    """The collection's proceedings: collection.md, collection.json or index.html."""
    row = collections.get(rt.db, tenant, ref)
    if name not in proceedings.NAMES:
        raise NotFound(f"no document {name[:100]!r}; there are {', '.join(proceedings.NAMES)}")
    key = collections.proceedings_prefix(row.id) + name
    if not rt.storage.exists(key):
        raise NotFound(
            f"collection {row.name!r} has no {name} yet: it is built when one of its jobs succeeds"
        )
    headers = {"Content-Disposition": f'inline; filename="{name}"'}
    if name.endswith(".html"):
        # A static page of model output: no script of any origin runs in it.
        headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        )
    return Response(rt.storage.get_bytes(key), media_type=proceedings.NAMES[name], headers=headers)


@router.get(
    "/{ref}/documents/talks/{job_id}/{name}",
    responses={**ERRORS, 200: {"content": {"text/markdown": {}, "application/json": {}, "text/vtt": {}}}},
    response_class=Response,
)
def get_talk_document(ref: str, job_id: str, name: str, rt: RuntimeDep, tenant: TenantDep) -> Response:
    """A talk's document as the proceedings link it (`talks/<job id>/<name>`, beside index.html)."""
    row = collections.get(rt.db, tenant, ref)
    job = rt.store.get(job_id, tenant)
    if job.collection_id != row.id:
        raise NotFound(f"no job {job_id[:64]} in collection {row.name!r}")
    return job_routes.get_document(job_id, name, rt, tenant)


MANIFEST_TYPES = {
    "text/csv": "manifest.csv",
    "application/x-ndjson": "manifest.jsonl",
    "application/jsonl": "manifest.jsonl",
}


@router.post(
    "/{ref}/manifest",
    status_code=202,
    response_model=JobList,
    responses={
        **ERRORS,
        415: {"model": Problem, "description": "neither text/csv nor application/x-ndjson"},
        422: {"model": ManifestProblems, "description": "refused whole: one line per problem"},
        429: {"model": Problem, "description": "over the tenant's limits"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def submit_manifest(request: Request, ref: str, rt: RuntimeDep, tenant: TenantDep) -> Any:
    """Submit every recording a manifest lists into the collection: CSV with a header, or JSONL,
    fields `source` (s3://bucket/key, or the id of a completed upload), `title`, `speakers`,
    `vocabulary`. Nothing is submitted unless every row is right; a refusal lists every problem."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    name = MANIFEST_TYPES.get(ctype)
    if name is None:
        return JSONResponse(
            {"detail": "send the manifest as text/csv or application/x-ndjson"}, status_code=415
        )
    data = await read_limited(request, manifests.MAX_MANIFEST_BYTES)
    try:
        jobs = await anyio.to_thread.run_sync(lambda: staging.manifest_jobs(rt, tenant, ref, data, name))
    except manifests.ManifestRefused as exc:
        return JSONResponse({"detail": str(exc).split("\n", 1)[0], "problems": exc.problems}, status_code=422)
    base = str(request.base_url)
    out = [job_out(j, base, rt.settings.flower_url) for j in jobs]
    return JobList(jobs=out, total=len(out), limit=len(out), offset=0, next=None)


async def read_limited(request: Request, limit: int) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadTooLarge(f"the manifest is larger than {limit // 1024} KB")
    return body


@router.delete(
    "/{ref}",
    status_code=204,
    response_class=Response,
    responses={**ERRORS, 409: {"model": Problem, "description": "one of its jobs is still running"}},
)
def delete_collection(ref: str, rt: RuntimeDep, tenant: TenantDep) -> Response:
    """Delete the collection, its jobs (documents, index rows, stored uploads) and its proceedings."""
    retention.delete_collection(rt, tenant, ref)
    return Response(status_code=204)
