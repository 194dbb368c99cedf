"""Where a window ends: the cut in silence just before the window's length limit.

Pure functions over per-frame loudness (dBFS of fixed 20 ms frames); the splitter in
``workers.audio`` measures the levels and feeds them here. Times are float seconds and windows
are half-open spans ``[start_s, end_s)`` of the source.

The rule:

* A window may end anywhere in its *lookback range*: the last quarter of the allowed length,
  at most the last 120 s (so 30-min windows end between 28:00 and 30:00, 20-s windows between
  15 s and 20 s). Ending near the limit keeps the number of windows, and so of model calls, low;
  a range of two minutes nearly always holds a pause between sentences.
* In that range the cut goes in the middle of the longest silence lasting at least 0.3 s, a
  silence being a frame quieter than -40 dBFS, or than the recording's noise floor + 6 dB when the
  room is noisy (the relative threshold is capped at -25 dBFS so that a recording that is loud
  everywhere never counts as silent). Ties go to the later silence.
* With no such silence (music, a continuous tone, crowd noise), the cut goes in the quietest
  100 ms of the range, again preferring the later one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

FRAME_S = 0.02
SILENCE_DBFS = -40.0
MIN_SILENCE_S = 0.3
LOOKBACK_FRACTION = 0.25
MAX_LOOKBACK_S = 120.0
FLOOR_MARGIN_DB = 6.0
RELATIVE_CEILING_DBFS = -25.0
QUIET_SMOOTHING_S = 0.1
FLOOR_PERCENTILE = 5.0
SILENT_DBFS = -120.0  # level given to digital silence (log of zero)


@dataclass(frozen=True)
class Cut:
    """Where to end a window, as an offset from the start of the levels given to ``choose_cut``."""

    offset_s: float
    in_silence: bool  # False when no silence was found and the quietest point was taken


def lookback_s(max_window_s: float) -> float:
    """Length of the range before the limit in which a window may end."""
    if max_window_s <= 0:
        raise ValueError(f"max_window_s must be positive, got {max_window_s}")
    return min(MAX_LOOKBACK_S, LOOKBACK_FRACTION * max_window_s)


def frame_levels(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32], frame_len: int
) -> npt.NDArray[np.float32]:
    """dBFS of each whole frame of ``frame_len`` samples (int16 full scale, or float in [-1, 1])."""
    n = len(samples) // frame_len
    if n == 0:
        return np.empty(0, dtype=np.float32)
    frames = samples[: n * frame_len].reshape(n, frame_len).astype(np.float32)
    if samples.dtype == np.int16:
        frames /= 32768.0
    power = np.einsum("ij,ij->i", frames, frames) / frame_len
    with np.errstate(divide="ignore"):
        levels = 10.0 * np.log10(power)
    return np.maximum(levels, SILENT_DBFS).astype(np.float32)


def silence_threshold(noise_floor_dbfs: float | None) -> float:
    """The level below which a frame counts as silence, given the recording's noise floor."""
    if noise_floor_dbfs is None:
        return SILENCE_DBFS
    relative = min(noise_floor_dbfs + FLOOR_MARGIN_DB, RELATIVE_CEILING_DBFS)
    return max(SILENCE_DBFS, relative)


def choose_cut(
    levels_dbfs: Sequence[float] | npt.NDArray[np.floating],
    frame_s: float = FRAME_S,
    noise_floor_dbfs: float | None = None,
) -> Cut:
    """Choose where to end a window inside the lookback range whose frame levels are given.

    The returned offset is a multiple of ``frame_s`` (a frame boundary), between 0 and the range's
    length inclusive.
    """
    levels = np.asarray(levels_dbfs, dtype=np.float64)
    n = len(levels)
    if n == 0:
        return Cut(0.0, in_silence=False)
    silent = levels < silence_threshold(noise_floor_dbfs)
    run = _longest_run(silent)
    min_frames = max(1, round(MIN_SILENCE_S / frame_s))
    if run is not None and run[1] - run[0] >= min_frames:
        start, stop = run
        return Cut(((start + stop) // 2) * frame_s, in_silence=True)
    width = max(1, min(n, round(QUIET_SMOOTHING_S / frame_s)))
    # Mean power (not mean dB) over a short span, so one quiet frame inside a loud stretch loses.
    power = np.convolve(10.0 ** (levels / 10.0), np.ones(width) / width, mode="valid")
    quietest = len(power) - 1 - int(np.argmin(power[::-1]))
    return Cut((quietest + width // 2) * frame_s, in_silence=False)


def _longest_run(mask: npt.NDArray[np.bool_]) -> tuple[int, int] | None:
    """[start, stop) of the longest run of True (the later one on ties), or None."""
    if not mask.any():
        return None
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    lengths = stops - starts
    best = len(lengths) - 1 - int(np.argmax(lengths[::-1]))
    return int(starts[best]), int(stops[best])


class NoiseFloor:
    """A running estimate of a recording's noise floor: a low percentile of all frame levels.

    Holds a 1-dB histogram, so memory is constant however long the recording is.
    """

    _LOW = int(SILENT_DBFS)

    def __init__(self) -> None:
        self._counts = np.zeros(-self._LOW + 1, dtype=np.int64)

    def add(self, levels_dbfs: npt.NDArray[np.floating]) -> None:
        bins = np.clip(np.floor(levels_dbfs).astype(np.int64) - self._LOW, 0, len(self._counts) - 1)
        self._counts += np.bincount(bins, minlength=len(self._counts))

    def dbfs(self) -> float | None:
        total = int(self._counts.sum())
        if total == 0:
            return None
        rank = np.searchsorted(np.cumsum(self._counts), FLOOR_PERCENTILE / 100.0 * total)
        return float(rank + self._LOW)


# --- the streaming planner the splitter feeds ----------------------------------------------------


class WindowCut:
    """The current window ends at absolute sample ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at


class WindowPlanner:
    """Turns a stream of samples into "write these samples" and "cut here" events.

    Samples before the window's lookback range pass straight through; those inside it are held
    until the range is full, then the cut is chosen and the rest starts the next window.
    """

    def __init__(self, max_window_s: float, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.frame_len = round(FRAME_S * sample_rate)
        self.limit = int(max_window_s * sample_rate)
        back = int(lookback_s(max_window_s) * sample_rate) // self.frame_len * self.frame_len
        self.direct = self.limit - back  # samples of a window written before the range
        self.index = 0  # of the current window
        self.start = 0  # absolute sample where the current window starts
        self.position = 0  # absolute samples seen
        self._written = 0  # samples of the current window already passed on
        self._held: list[npt.NDArray[np.int16]] = []
        self._held_n = 0
        self._floor = NoiseFloor()

    def feed(self, samples: npt.NDArray[np.int16]) -> Iterator[npt.NDArray[np.int16] | WindowCut]:
        self._floor.add(frame_levels(samples, self.frame_len))
        self.position += len(samples)
        pending: deque[npt.NDArray[np.int16]] = deque([samples])
        while pending:
            chunk = pending.popleft()
            if len(chunk) == 0:
                continue
            if self._written < self.direct:
                n = min(self.direct - self._written, len(chunk))
                self._written += n
                yield chunk[:n]
                pending.appendleft(chunk[n:])
                continue
            n = min(self.limit - self._written - self._held_n, len(chunk))
            self._held.append(chunk[:n])
            self._held_n += n
            pending.appendleft(chunk[n:])
            if self._written + self._held_n < self.limit:
                continue
            held = np.concatenate(self._held)
            self._held, self._held_n = [], 0
            cut = choose_cut(frame_levels(held, self.frame_len), FRAME_S, self._floor.dbfs())
            at = min(len(held), round(cut.offset_s * self.sample_rate))
            if at:
                yield held[:at]
            end = self.start + self._written + at
            if not cut.in_silence:
                log.info("no silence before %.1f s; cut at the quietest point", end / self.sample_rate)
            yield WindowCut(end)
            self.index += 1
            self.start = end
            self._written = 0
            pending.appendleft(held[at:])

    def flush(self) -> npt.NDArray[np.int16]:
        held = np.concatenate(self._held) if self._held else np.empty(0, np.int16)
        self._held, self._held_n = [], 0
        return held
