"""Limits the API enforces per process before it reads a body: concurrent uploads (in all and per
tenant), the size of a JSON body, and how long a client may leave its request body idle.

Uploads run on their own thread limiter, so however many stall, the threads that serve
``/v1/jobs`` and the other plain routes stay free; ``/healthz`` needs no thread at all.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
from starlette.requests import ClientDisconnect, Request

from api.upload_stream import RequestTimedOut, UploadTooLarge
from jobs.errors import InputError, TooBusy
from jobs.settings import Settings

RETRY_UPLOAD_S = 10


class UploadSlots:
    """How many uploads stream in at once, in all and per tenant."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.limiter = anyio.CapacityLimiter(total)
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadSlots:
        return cls(settings.max_uploads, settings.max_uploads_per_tenant)

    def in_use(self) -> int:
        with self._lock:
            return sum(self._busy.values())

    @contextmanager
    def take(self, tenant: str) -> Iterator[None]:
        with self._lock:
            if self._busy[tenant] >= self.per_tenant:
                raise TooBusy(
                    f"this API key already has {self.per_tenant} uploads in progress "
                    "(VOXBATCH_MAX_UPLOADS_PER_TENANT); wait for one to finish",
                    RETRY_UPLOAD_S,
                )
            if sum(self._busy.values()) >= self.total:
                raise TooBusy(
                    f"the server takes {self.total} uploads at once (VOXBATCH_MAX_UPLOADS); "
                    "try again shortly",
                    RETRY_UPLOAD_S,
                )
            self._busy[tenant] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[tenant] -= 1
                if self._busy[tenant] <= 0:
                    del self._busy[tenant]


async def chunks_with_timeout(request: Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The request body's chunks; ``RequestTimedOut`` when none arrives for ``timeout_s``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimedOut(
                f"the request body stalled: nothing arrived for {timeout_s:g} s "
                "(VOXBATCH_REQUEST_READ_TIMEOUT_S)"
            ) from exc
        except ClientDisconnect as exc:
            raise InputError("the request was interrupted before it finished") from exc
        yield chunk


async def read_json_body(request: Request, settings: Settings) -> bytes:
    """The whole JSON body, refused with 413 as soon as it is over ``VOXBATCH_MAX_JSON_KB``."""
    limit = int(settings.max_json_kb * 1024)
    too_large = UploadTooLarge(
        f"the JSON body is larger than {settings.max_json_kb:g} KB (VOXBATCH_MAX_JSON_KB); "
        "recordings go in a multipart upload"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in chunks_with_timeout(request, settings.request_read_timeout_s):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
