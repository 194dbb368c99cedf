"""Helpers for the segmenter's tests (tests/core/test_segmenting.py on numpy-made sound,
tests/inprocess/test_segmenting_speech.py on espeak-ng speech)."""

from __future__ import annotations

import numpy as np

from jobs.planning import FRAME_S, frame_levels
from jobs.segmenting import SAMPLE_RATE, Segment, SegmentParams, detect_speech, thresholds, window_levels
from tests.speech import Part, render

FRAME = round(SAMPLE_RATE * FRAME_S)
PAD = SegmentParams().pad_s


def spans(parts: list[Part]) -> list[tuple[Part, float, float]]:
    """Each part with its [start, end) in seconds, as ``render`` lays them out."""
    out = []
    position = 0
    for part in parts:
        n = len(render([part])[0])
        out.append((part, position / SAMPLE_RATE, (position + n) / SAMPLE_RATE))
        position += n
    return out


def check_invariants(segments: list[Segment], samples: np.ndarray, max_segment_s: float) -> None:
    """Order, no overlap, the limit, speech runs inside, and every speech frame covered."""
    duration = len(samples) / SAMPLE_RATE
    previous_end = 0.0
    for i, seg in enumerate(segments):
        assert seg.index == i
        assert previous_end - 1e-9 <= seg.start_s < seg.end_s <= duration + 1e-9
        assert seg.duration_s <= max_segment_s + 1e-6, seg
        assert seg.speech, seg
        assert seg.speech[0][0] == seg.start_s and seg.speech[-1][1] == seg.end_s
        for (a, b), (c, _) in zip(seg.speech, seg.speech[1:], strict=False):
            assert a < b < c
        previous_end = seg.end_s
    mask = detect_speech(window_levels(samples))
    covered = np.zeros(len(mask), dtype=bool)
    for seg in segments:
        covered[round(seg.start_s / FRAME_S) : round(seg.end_s / FRAME_S)] = True
    uncovered = np.flatnonzero(mask & ~covered)
    assert not len(uncovered), f"speech frames outside every segment: {uncovered[:10] * FRAME_S}"


def loud_frames(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """Indices (in the whole recording) of frames in [start_s, end_s) that reach the onset."""
    onset, _ = thresholds(None)
    levels = frame_levels(samples, FRAME)
    first, last = int(start_s / FRAME_S), int(end_s / FRAME_S)
    return first + np.flatnonzero(levels[first:last] >= onset)


def inside_any(t: float, segments: list[Segment]) -> bool:
    return any(s.start_s <= t < s.end_s for s in segments)
