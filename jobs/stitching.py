"""Stitching window results into one transcript, in time order, with nothing missing or repeated.

Windows are cut inside silences with no overlap, so stitching never has to guess which words a
neighbour already said: it checks that the windows tile the recording and joins their text.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.errors import PermanentError

_SPACE = re.compile(r"[ \t]+")


@dataclass
class WindowResult:
    """What one window produced; stored as JSON under the window's result key."""

    index: int
    start_s: float
    end_s: float
    transcript: str
    summary: str | None
    # When the server refused the window's summary audio as too long, the pieces it was re-cut into.
    pieces: list[dict[str, float]] = field(default_factory=list)
    engine: str = ""
    model: str = ""
    # Speech segments on the recording's clock: {index, start_s, end_s, text, speech}.
    segments: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WindowResult:
        return cls(**json.loads(data))


def clean(text: str) -> str:
    lines = [_SPACE.sub(" ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def check_tiling(results: list[WindowResult], duration_s: float | None, tol_s: float = 0.05) -> None:
    """Windows must start at 0, follow each other without gap or overlap, and reach the end."""
    expected = 0.0
    for i, r in enumerate(results):
        if r.index != i:
            raise PermanentError(f"window {i} is missing (found window {r.index} in its place)")
        if abs(r.start_s - expected) > tol_s:
            raise PermanentError(
                f"window {i} starts at {r.start_s:.2f}s but the previous one ended at {expected:.2f}s"
            )
        expected = r.end_s
    if duration_s is not None and results and abs(expected - duration_s) > max(1.0, tol_s):
        raise PermanentError(f"windows end at {expected:.2f}s but the recording lasts {duration_s:.2f}s")


def stitch(results: list[WindowResult]) -> str:
    """The whole transcript: windows in time order, one paragraph each."""
    ordered = sorted(results, key=lambda r: r.start_s)
    return "\n\n".join(t for t in (clean(r.transcript) for r in ordered) if t)
