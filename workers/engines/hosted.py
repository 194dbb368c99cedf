"""What the hosted engines (Mistral, Gemini, OpenAI) share: the retry hints of their 429 answers and
MP3 for APIs that take no FLAC. What a request may carry: ``workers/engines/caps.py``; their answers
become voxbatch errors in ``workers/engines/answers.py``, as vLLM's do.

Each engine talks to its vendor through the vendor's own SDK; the SDKs of Mistral and OpenAI retry
429 and 5xx themselves and honour ``Retry-After`` (and ``retry-after-ms``); google-genai does not
read Google's ``RetryInfo``, so the Gemini engine retries with ``retry_delay_s`` itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from jobs.errors import InputError

_GOOGLE_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def retry_delay_s(headers: Mapping[str, str] | None, body: Any) -> float | None:
    """The wait a 429 (or 503) asks for: ``retry-after-ms``, ``Retry-After`` (seconds or a date), or
    Google's ``google.rpc.RetryInfo`` detail (``"retryDelay": "7s"``) in the error body."""
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        if "retry-after-ms" in lowered:
            try:
                return max(0.0, float(lowered["retry-after-ms"]) / 1000)
            except ValueError:
                pass
        if "retry-after" in lowered:
            value = lowered["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:
                try:
                    from datetime import UTC, datetime

                    return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
                except (TypeError, ValueError):
                    pass
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _GOOGLE_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def mp3_bytes(audio: Path, bitrate: str = "48k") -> bytes:
    """The audio as mono MP3 (for chat APIs that take only WAV or MP3): 30 min is about 11 MB."""
    done = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-i",
            str(audio),
            "-ac",
            "1",
            "-b:a",
            bitrate,
            "-f",
            "mp3",
            "-",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise InputError(f"ffmpeg could not encode {audio.name} as MP3: {done.stderr.decode()[-300:]}")
    return done.stdout
