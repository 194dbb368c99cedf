"""Re-cutting a window the model server refused as too long or too large.

The client learns the server's caps from its refusals (vLLM answers 400 with the limit it applies);
the refused audio is cut again at silences into pieces that fit, and the operation runs on each
piece. Pieces are cut once per file and limit, so the summary pass reuses the transcript pass's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.engine import WindowAudio
from jobs.errors import EngineRejected, WindowTooLarge
from jobs.runtime import Runtime

log = logging.getLogger(__name__)

# Below this a refused piece is not worth cutting again: the server's refusal is about something else.
MIN_PIECE_S = 10.0
MAX_RESPLIT_DEPTH = 5


@dataclass
class Piece:
    start_s: float  # relative to the window
    end_s: float
    text: str


class Recutter:
    """Runs one engine operation over a window, cutting it smaller whenever the server refuses."""

    def __init__(self, rt: Runtime, tmp: Path, job_id: str) -> None:
        self.rt = rt
        self.tmp = tmp
        self.job_id = job_id
        self._splits: dict[tuple[Path, float], list[WindowAudio]] = {}

    def over(
        self, op: Callable[[Path], str], path: Path, start: float, end: float, depth: int = 0
    ) -> list[Piece]:
        limit = self.rt.engine.max_audio_s()
        if limit is not None and end - start > limit + 0.5:
            return self._cut(op, path, start, end, limit * 0.97, depth)
        try:
            return [Piece(start, end, op(path))]
        except WindowTooLarge as exc:
            length = end - start
            if depth >= MAX_RESPLIT_DEPTH or length < 2 * MIN_PIECE_S:
                raise EngineRejected(f"the model server refused even a {length:.0f} s piece: {exc}") from exc
            target = length / 2
            if exc.max_duration_s and exc.max_duration_s < length:
                target = max(MIN_PIECE_S, exc.max_duration_s * 0.97)
            log.info(
                "job %s: server refused %.0f s of audio (%s); cutting into ≤ %.0f s pieces",
                self.job_id,
                length,
                exc,
                target,
            )
            return self._cut(op, path, start, end, target, depth + 1)

    def _cut(
        self, op: Callable[[Path], str], path: Path, start: float, end: float, max_s: float, depth: int
    ) -> list[Piece]:
        pieces: list[Piece] = []
        for w in self._split(path, max_s):
            pieces += self.over(op, w.path, start + w.start_s, start + w.end_s, depth)
        return pieces

    def _split(self, path: Path, max_s: float) -> list[WindowAudio]:
        key = (path, round(max_s, 3))
        if key not in self._splits:
            out_dir = self.tmp / f"pieces-{len(self._splits)}"
            out_dir.mkdir()
            self._splits[key] = list(self.rt.audio.split(str(path), out_dir, max_s))
        return self._splits[key]
