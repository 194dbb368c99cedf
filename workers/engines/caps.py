"""What one request may carry, for every engine: the longest audio and the largest upload.

Known up front (settings, vendors' documented limits) and lowered by what refusals reveal
(``workers/engines/answers.py`` reads the numbers out of them), so later windows are cut before
upload instead of being refused again.
"""

from __future__ import annotations

import threading
from pathlib import Path

from jobs.errors import InputError, WindowTooLarge
from workers.engines import durations

MIB = 1024 * 1024
SIZE_SAFETY = 0.9  # compressed bitrate varies with content: aim below a byte limit


class Caps:
    """What one request may carry, for every engine: the longest audio and the largest upload,
    known up front (settings, vendors' documented limits) and lowered by what refusals reveal."""

    def __init__(
        self, name: str, max_s: float | None, max_bytes: float | None = None, bytes_hint: str = ""
    ) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._max_s = max_s
        self._max_bytes = max_bytes
        self._bytes_hint = bytes_hint  # how an operator raises the byte limit, said in the refusal

    def max_audio_s(self) -> float | None:
        with self._lock:
            return self._max_s

    def max_bytes(self) -> float | None:
        with self._lock:
            return self._max_bytes

    def learn(self, exc: Exception) -> None:
        if isinstance(exc, WindowTooLarge) and exc.max_duration_s:
            self.lower_s(exc.max_duration_s)

    def lower_s(self, limit: float) -> None:
        with self._lock:
            self._max_s = limit if self._max_s is None else min(self._max_s, limit)

    def lower_bytes(self, limit: float) -> None:
        with self._lock:
            self._max_bytes = limit if self._max_bytes is None else min(self._max_bytes, limit)

    def admit(self, audio: Path, max_s: float | None = None) -> tuple[float, int]:
        """Refuse before uploading what the server is known to refuse; return (seconds, bytes).
        ``max_s``: a tighter limit the caller knows for this request (a model's longest item)."""
        if not audio.is_file():
            raise InputError(f"window audio {audio} does not exist")
        duration = durations.duration_s(audio)
        caps = [c for c in (self.max_audio_s(), max_s) if c is not None]
        cap = min(caps) if caps else None
        if cap is not None and duration > cap + 0.5:
            raise WindowTooLarge(
                f"the audio lasts {duration:.0f} s, over {self.name}'s limit of {cap:.0f} s",
                max_duration_s=cap,
            )
        size = audio.stat().st_size
        upload_cap = self.max_bytes()
        if upload_cap is not None and size > upload_cap:
            hint = f" ({self._bytes_hint})" if self._bytes_hint else ""
            raise WindowTooLarge(
                f"the audio is {size / MIB:.1f} MB, over {self.name}'s upload limit of "
                f"{upload_cap / MIB:.1f} MB{hint}",
                max_duration_s=fitting_duration(duration, size, upload_cap),
            )
        return duration, size


def fitting_duration(duration: float, size: int, upload_cap: float) -> float:
    """The duration whose file should fit ``upload_cap`` at this file's bitrate, rounded down."""
    return float(int(duration * upload_cap / size * SIZE_SAFETY))
