"""The duration of a window or segment file, read from its header: engines size requests before
sending.

Windows are FLAC, whose STREAMINFO block names the sample rate and the total sample count; segments
are PCM WAV, whose header does the same. No decode (and no subprocess) is needed for either, which
matters at dozens of segments per window. Anything else falls back to ffprobe.
"""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

from jobs.errors import InputError


def duration_s(path: Path) -> float:
    """Seconds of audio in ``path``. Raises InputError when the file is not readable audio."""
    with path.open("rb") as f:
        head = f.read(42)
    # "fLaC", then a metadata block header (type 0 = STREAMINFO, length 34), then STREAMINFO.
    if len(head) == 42 and head[:4] == b"fLaC" and head[4] & 0x7F == 0:
        info = int.from_bytes(head[18:26], "big")
        sample_rate = info >> 44
        total_samples = info & ((1 << 36) - 1)
        if sample_rate and total_samples:
            return total_samples / sample_rate
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            with wave.open(str(path), "rb") as w:
                return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            pass
    return _probe_duration_s(path)


def _probe_duration_s(path: Path) -> float:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        check=False,
    )
    try:
        return float(json.loads(proc.stdout)["format"]["duration"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path.name} is not an audio file ffprobe can read") from exc
