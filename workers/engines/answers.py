"""The one place where model servers' answers become voxbatch errors, for every engine.

vLLM's HTTP answers (``workers/engines/http.py``) and the hosted vendors' SDK errors (Mistral,
OpenAI, Gemini) go through the same rules:

- no answer, 408, 429 and 5xx are transient (``is_transient``): the vLLM client sends again; a
  hosted SDK has already retried, so they become ``EngineUnavailable``;
- 401 and 403 are a refused API key (``EngineRejected``);
- a refusal about size, duration or context length (400/413/422) becomes ``RefusedTooLarge`` (a
  ``WindowTooLarge``), carrying the duration limit when the server names one ("maximum allowed
  duration of 600s"), so the window is cut smaller and the limit remembered (``caps.Caps``);
- any other 4xx becomes ``EngineRejected`` with the server's own message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jobs.errors import EngineRejected, EngineUnavailable, WindowTooLarge

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


def is_transient(status: int | None) -> bool:
    """An answer that may be different if asked again: none at all, 408, 429 or 5xx."""
    return status is None or status in (408, 429) or status >= 500


def as_error(server: str, status: int | None, message: str) -> Exception:
    """An answer (or a failed connection, ``status`` None) as a voxbatch error."""
    if is_transient(status):
        what = f"HTTP {status}" if status else "no answer"
        return EngineUnavailable(f"{server} did not answer usefully ({what}: {message}); try again later")
    assert status is not None
    if status in (401, 403):
        return EngineRejected(f"{server} refused the API key: {message}")
    refusal = Refusal(status, message)
    if status in (400, 413, 422) and refusal.too_large:
        return RefusedTooLarge(f"{server} refused the audio as too large: {message}", refusal)
    return EngineRejected(f"{server} refused the request: {message}")


def error_message(body: str | bytes | None) -> str:
    """The message of an error body in vLLM's, OpenAI's, Mistral's or Google's shapes, else the text."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        answer = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    embedded = embedded_error(answer)
    if embedded is not None:
        return embedded[1]
    if isinstance(answer, dict):
        for key in ("message", "detail", "error"):
            if answer.get(key):
                return str(answer[key])
    return str(answer)[:500]


def embedded_error(answer: Any) -> tuple[int, str] | None:
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
