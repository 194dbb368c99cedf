"""One retrying JSON-over-HTTP client for OpenAI-compatible model servers (vLLM).

- requests go through the process's request scheduler (``workers/engines/scheduler.py``): one
  event loop and async client, a fixed number in flight, fair between tenants, a deadline per attempt;
- what may succeed if sent again (connection errors, deadlines passed, 408, 429, 5xx) is retried
  with exponential backoff and full jitter, then raised as EngineUnavailable;
- every other answer becomes a voxbatch error in ``workers/engines/answers.py``, the one mapping
  all engines share; an error body under status 200 (some vLLM versions answer undecodable uploads
  that way) is classified like the status code it carries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from jobs.errors import EngineRejected
from jobs.shares import current_share
from workers.engines.answers import (
    as_error,
    embedded_error,
    error_message,
    is_transient,
)
from workers.engines.scheduler import EngineAborted, Retryable, abort_all, backoff_s, process_scheduler

logger = logging.getLogger(__name__)
# httpx logs every request at INFO: hundreds a second from a gpu worker would drown its own log
# (retries and refusals are logged here, by the scheduler, at WARNING).
logging.getLogger("httpx").setLevel(logging.WARNING)

__all__ = ["ApiClient", "EngineAborted", "abort_all", "backoff_s"]

MAX_BODY_BYTES = 16 * 1024 * 1024

# A multipart upload is rebuilt for every attempt, so files are reopened from the start.
FilesFactory = Callable[[], Mapping[str, Any]]


class ApiClient:
    """POSTs JSON or multipart to ``base_url`` and returns the decoded JSON (or text) answer.

    Synchronous for its callers, asynchronous underneath: every request goes through the process's
    ``RequestScheduler`` (one event loop, one ``httpx.AsyncClient``, ``max_inflight`` at the server,
    fair between tenants), charged to the calling thread's share (``jobs.shares.charged_to``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        server: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 1800.0,
        retries: int = 5,
        backoff_base_s: float = 1.0,
        max_inflight: int = 256,
        max_audio_beside_clips_s: float | None = None,
        audio_beside_clips_ratio: float | None = None,
        overtaken_factor: float | None = None,
    ) -> None:
        self.server = server
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.timeout_s = timeout_s
        self._scheduler = process_scheduler(
            max_inflight, max_audio_beside_clips_s, audio_beside_clips_ratio, overtaken_factor
        )
        # Above the scheduler's cap, so a request never waits for a connection of its own pool.
        pool = max_inflight + 16
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )

    def close(self) -> None:
        self._scheduler.run_on_loop(self._client.aclose())

    def post(
        self,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        files: FilesFactory | None = None,
        deadline_s: float | None = None,
        cost_s: float = 1.0,
    ) -> Any:
        """Send, retrying what may succeed again; ``deadline_s`` bounds each attempt (default: the
        client's timeout) and ``cost_s`` (audio seconds) is what the tenant is charged in the queue."""

        async def attempt(deadline: float) -> Any:
            return await self._post_once(
                path, json_body=json_body, data=data, files=files, deadline_s=deadline
            )

        return self._scheduler.call(
            attempt,
            share=current_share(),
            cost_s=cost_s,
            deadline_s=min(deadline_s or self.timeout_s, self.timeout_s),
            retries=self.retries,
            backoff_base_s=self.backoff_base_s,
            what=f"{path} to {self.server}",
        )

    async def _post_once(
        self,
        path: str,
        *,
        json_body: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        files: FilesFactory | None,
        deadline_s: float,
    ) -> Any:
        # Files are read whole (segments are under 1 MB): the attempt owns its bytes, a retry
        # rebuilds them, and no open handle outlives a cancelled attempt.
        opened = _read_files(files) if files is not None else None
        timeout = httpx.Timeout(deadline_s, connect=min(deadline_s, 10.0))
        try:
            async with self._client.stream(
                "POST", path, json=json_body, data=data, files=opened, timeout=timeout
            ) as response:
                body = await _read_capped(response)
                status = response.status_code
                content_type = response.headers.get("content-type", "")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from exc
        if is_transient(status):
            raise Retryable(f"HTTP {status}: {error_message(body) or 'no message'}")
        if status >= 400:
            raise as_error(self.server, status, error_message(body) or f"HTTP {status}")
        if "json" not in content_type:
            return body.decode("utf-8", errors="replace")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise EngineRejected(f"{self.server} answered with invalid JSON") from exc
        embedded = embedded_error(answer)
        if embedded is not None:
            status, message = embedded
            if is_transient(status):
                raise Retryable(f"HTTP 200 carrying {status}: {message}")
            raise as_error(self.server, status, message)
        return answer


def _read_files(files: FilesFactory) -> dict[str, Any]:
    read: dict[str, Any] = {}
    for name, value in files().items():
        if isinstance(value, tuple):
            handle = value[1]
            if hasattr(handle, "read"):
                try:
                    value = (value[0], handle.read(), *value[2:])
                finally:
                    handle.close()
        read[name] = value
    return read


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise EngineRejected(f"the model server's answer exceeded {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
