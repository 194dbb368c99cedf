"""One retrying JSON-over-HTTP client for OpenAI-compatible model servers, and the one place where
their answers become voxbatch errors.

- connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full jitter,
  then raised as EngineUnavailable;
- a refusal about size, duration or context length (400/413/422) becomes WindowTooLarge, carrying
  the duration limit when the server names one ("maximum allowed duration of 600s");
- any other 4xx becomes EngineRejected with the server's own message;
- an error body under status 200 (some vLLM versions answer undecodable uploads that way) is
  classified like the status code it carries.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from httpcore import NetworkStream
from httpcore._backends.sync import SyncBackend, SyncStream

from jobs.errors import EngineRejected, EngineUnavailable, WindowTooLarge

logger = logging.getLogger(__name__)

# Voxtral's token arithmetic (reference §0): 12.5 tokens/s, audio padded to 30-s chunks.
TOKENS_PER_CHUNK = 375
CHUNK_S = 30.0
MAX_BODY_BYTES = 16 * 1024 * 1024

_DURATION_LIMIT = re.compile(r"duration of (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_CONTEXT_LIMIT = re.compile(r"(?:maximum context length is|maximum model length of)\s+(\d+)", re.IGNORECASE)
_TOO_LARGE = (
    "maximum allowed duration",
    "file size",
    "filesize",
    "too large",
    "context length",
    "maximum model length",
    "vllm_max_audio",
    "exceeds the maximum",
)

# A multipart upload is rebuilt for every attempt, so files are reopened from the start.
FilesFactory = Callable[[], Mapping[str, Any]]


class Refusal:
    """A 4xx answer worth remembering: what kind of limit it hit and the numbers it named."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        lowered = message.lower()
        self.too_large = status == 413 or any(k in lowered for k in _TOO_LARGE)
        self.about_size = "file size" in lowered or "filesize" in lowered or status == 413
        match = _DURATION_LIMIT.search(message)
        self.max_duration_s = float(match.group(1)) if match else None
        match = _CONTEXT_LIMIT.search(message)
        self.max_model_len = int(match.group(1)) if match else None


class RefusedTooLarge(WindowTooLarge):
    """WindowTooLarge that keeps the server's refusal, so the engine can learn from it."""

    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message, max_duration_s=refusal.max_duration_s)
        self.refusal = refusal


def backoff_s(attempt: int, base_s: float, cap_s: float = 30.0) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] so retrying clients spread out."""
    return random.uniform(0.0, min(cap_s, base_s * 2**attempt))


class EngineAborted(Exception):
    """The worker is stopping: its requests to the model server were aborted (``abort_all``).

    Deliberately not a VoxbatchError: the window was handed back to the queue, so the task must
    neither retry it nor fail the job."""


_aborting = threading.Event()
_live_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class _TrackedStream(SyncStream):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        _live_sockets.add(sock)

    def start_tls(self, *args: Any, **kwargs: Any) -> NetworkStream:
        upgraded = super().start_tls(*args, **kwargs)
        sock = upgraded.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            _live_sockets.add(sock)
        return upgraded


class _TrackingBackend(SyncBackend):
    """httpcore's blocking backend, remembering its sockets so that ``abort_all`` can shut them
    down: closing an httpx client does not wake a thread blocked reading from it."""

    def connect_tcp(self, *args: Any, **kwargs: Any) -> NetworkStream:
        stream = super().connect_tcp(*args, **kwargs)
        sock = stream.get_extra_info("socket")
        return _TrackedStream(sock) if isinstance(sock, socket.socket) else stream


def abort_all() -> int:
    """Abort every request in flight to a model server (a stopping worker); returns how many
    connections were cut. Later requests of this process raise ``EngineAborted`` at once."""
    _aborting.set()
    cut = 0
    for sock in list(_live_sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
            cut += 1
        except OSError:
            pass  # already closed
    return cut


class ApiClient:
    """POSTs JSON or multipart to ``base_url`` and returns the decoded JSON (or text) answer."""

    def __init__(
        self,
        base_url: str,
        *,
        server: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 1800.0,
        retries: int = 5,
        backoff_base_s: float = 1.0,
    ) -> None:
        self.server = server
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        transport = httpx.HTTPTransport()
        transport._pool._network_backend = _TrackingBackend()  # see abort_all
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def post(
        self,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        files: FilesFactory | None = None,
    ) -> Any:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = backoff_s(attempt - 1, self.backoff_base_s)
                logger.warning(
                    "%s: retrying %s in %.2f s (attempt %d of %d) after: %s",
                    self.server,
                    path,
                    delay,
                    attempt + 1,
                    self.retries + 1,
                    last,
                )
                time.sleep(delay)
            if _aborting.is_set():
                raise EngineAborted(f"the worker is stopping: {path} to {self.server} not sent")
            try:
                return self._post_once(path, json_body=json_body, data=data, files=files)
            except _Retryable as exc:
                if _aborting.is_set():
                    raise EngineAborted(f"the worker is stopping: {path} to {self.server} aborted") from exc
                last = exc
        raise EngineUnavailable(
            f"{self.server} did not answer after {self.retries + 1} attempts ({last}); "
            "check that the model server is up"
        ) from last

    def _post_once(
        self,
        path: str,
        *,
        json_body: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        files: FilesFactory | None,
    ) -> Any:
        opened = files() if files is not None else None
        try:
            with self._client.stream("POST", path, json=json_body, data=data, files=opened) as response:
                body = _read_capped(response)
                status = response.status_code
                content_type = response.headers.get("content-type", "")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for value in (opened or {}).values():
                handle = value[1] if isinstance(value, tuple) else value
                if hasattr(handle, "close"):
                    handle.close()
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {_message(body) or 'no message'}")
        if status >= 400:
            raise self._refusal_error(status, _message(body) or f"HTTP {status}")
        if "json" not in content_type:
            return body.decode("utf-8", errors="replace")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise EngineRejected(f"{self.server} answered with invalid JSON") from exc
        embedded = _embedded_error(answer)
        if embedded is not None:
            status, message = embedded
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP 200 carrying {status}: {message}")
            raise self._refusal_error(status, message)
        return answer

    def _refusal_error(self, status: int, message: str) -> Exception:
        if status in (401, 403):
            return EngineRejected(f"{self.server} refused the API key: {message}")
        refusal = Refusal(status, message)
        if status in (400, 413, 422) and refusal.too_large:
            return RefusedTooLarge(f"{self.server} refused the window as too large: {message}", refusal)
        return EngineRejected(f"{self.server} refused the request: {message}")


class _Retryable(Exception):
    pass


def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise EngineRejected(f"the model server's answer exceeded {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _message(body: bytes) -> str:
    """The error message in vLLM's, OpenAI's or Mistral's error shapes, else the raw text."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:500]
    embedded = _embedded_error(answer)
    if embedded is not None:
        return embedded[1]
    if isinstance(answer, dict):
        for key in ("message", "detail", "error"):
            if answer.get(key):
                return str(answer[key])
    return str(answer)[:500]


def _embedded_error(answer: Any) -> tuple[int, str] | None:
    """(status, message) when a JSON answer is an error: ``{"error": {...}}`` or
    ``{"object": "error", ...}``; the status is the one it names, 400 when it names none."""
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("error"), dict):
        err = answer["error"]
    elif answer.get("object") == "error":
        err = answer
    else:
        return None
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 400
    return status, str(err.get("message") or err)


def audio_tokens(duration_s: float) -> int:
    """Prompt tokens Voxtral spends on ``duration_s`` of audio (padded to 30-s chunks)."""
    return max(1, math.ceil(duration_s / CHUNK_S)) * TOKENS_PER_CHUNK


def longest_audio_s(token_budget: int) -> float:
    """The longest audio whose tokens fit in ``token_budget``."""
    return max(0, token_budget // TOKENS_PER_CHUNK) * CHUNK_S
