"""/v1/uploads: presigned S3 multipart uploads for recordings too large to send through the API.

1. ``POST /v1/uploads`` {filename, size} → upload_id, part_size and one presigned URL per part;
2. the client PUTs each part to its URL and keeps each answer's ``ETag`` header;
3. ``POST /v1/uploads/{upload_id}/complete`` {parts: [{part_number, etag}]};
4. ``POST /v1/jobs`` {"upload_id": ...} starts the job.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request, Response

from api import staging
from api.auth import RuntimeDep, TenantDep
from api.schemas import Problem, UploadComplete, UploadCreate, UploadDone, UploadOut

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown one"},
    404: {"model": Problem, "description": "no such upload for this API key"},
    422: {"model": Problem, "description": "storage is not S3, or bad parts"},
}


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    responses={**ERRORS, 413: {"model": Problem, "description": "over the size limit"}},
)
async def start_upload(body: UploadCreate, request: Request, rt: RuntimeDep, tenant: TenantDep) -> UploadOut:
    """Start a presigned multipart upload (S3 storage only): one URL to PUT each part to."""
    from api.upload_stream import display_name

    name = display_name(body.filename)
    data = await anyio.to_thread.run_sync(lambda: staging.start_upload(rt, tenant, name, body.size))
    complete = str(request.url_for("complete_upload", upload_id=data["upload_id"]))
    return UploadOut(**data, complete_url=complete)


@router.post("/{upload_id}/complete", response_model=UploadDone, responses=ERRORS)
def complete_upload(upload_id: str, body: UploadComplete, rt: RuntimeDep, tenant: TenantDep) -> UploadDone:
    """Finish an upload with the ETag of every part; then POST /v1/jobs with its upload_id."""
    parts = [(p.part_number, p.etag) for p in body.parts]
    size = staging.complete_upload(rt, tenant, upload_id, parts)
    return UploadDone(upload_id=upload_id, size=size)


@router.delete("/{upload_id}", status_code=204, responses=ERRORS)
def abort_upload(upload_id: str, rt: RuntimeDep, tenant: TenantDep) -> Response:
    """Abandon an upload in progress; S3 drops the parts already sent."""
    staging.abort_upload(rt, tenant, upload_id)
    return Response(status_code=204)
