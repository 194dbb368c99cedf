"""Speech segments inside a window (jobs/segmenting.py): tones, noise, silence and levels made with
numpy, nothing else (the same rules on espeak-ng speech: tests/inprocess/test_segmenting_speech.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jobs.planning import FRAME_S
from jobs.segmenting import (
    SAMPLE_RATE,
    Segment,
    SegmentParams,
    detect_speech,
    segment_levels,
    segment_samples,
    thresholds,
)
from tests.segments import PAD, check_invariants
from tests.speech import Part, Tone, render


def test_a_dip_in_a_long_sound_is_where_it_is_cut() -> None:
    parts: list[Part] = [
        Tone(220.0, 20.0, amplitude=0.3, noise=0.05),
        Tone(220.0, 0.1, amplitude=0.02),  # -37 dBFS: quieter, but not a pause
        Tone(220.0, 25.0, amplitude=0.3, noise=0.05),
    ]
    samples, _ = render(parts)
    segments = segment_samples(samples)
    check_invariants(segments, samples, 30.0)
    assert len(segments) == 2
    assert 20.0 - FRAME_S <= segments[0].end_s <= 20.1 + FRAME_S
    assert segments[1].start_s == segments[0].end_s


# --- silence, noise, music ------------------------------------------------------------------


@pytest.mark.parametrize(
    "samples",
    [
        np.zeros(SAMPLE_RATE * 40, dtype=np.float32),
        np.zeros(SAMPLE_RATE * 40, dtype=np.int16),
        np.random.default_rng(1).normal(0.0, 0.003, SAMPLE_RATE * 40).astype(np.float32),  # -50 dBFS
        np.random.default_rng(2).normal(0.0, 0.02, SAMPLE_RATE * 40).astype(np.float32),  # -34 dBFS
        np.zeros(100, dtype=np.float32),  # less than one frame
        np.zeros(0, dtype=np.float32),
    ],
    ids=["silence", "silence-int16", "hiss", "quiet-noise", "one-sample-short", "empty"],
)
def test_silence_and_quiet_sound_give_no_segments(samples: np.ndarray) -> None:
    assert segment_samples(samples) == []


def test_a_click_is_not_speech() -> None:
    samples = np.zeros(SAMPLE_RATE * 5, dtype=np.float32)
    samples[SAMPLE_RATE * 2 : SAMPLE_RATE * 2 + 480] = 0.8  # 30 ms
    assert segment_samples(samples) == []


def test_a_steady_tone_is_cut_into_touching_pieces_at_the_limit() -> None:
    samples, _ = render([Tone(330.0, 75.0, amplitude=0.2, noise=0.02)])
    segments = segment_samples(samples)
    check_invariants(segments, samples, 30.0)
    assert 3 <= len(segments) <= 5  # each cut somewhere in the second half of the limit
    assert segments[0].start_s == 0.0 and segments[-1].end_s == pytest.approx(75.0)
    for before, after in itertools.pairwise(segments):
        assert before.end_s == after.start_s
        assert before.duration_s >= 15.0  # cut in the second half of the limit


def test_music_like_sound_is_cut_in_its_troughs_and_covered() -> None:
    # A chord with a slow tremolo and a little noise, 75 s: sound everywhere, softer every 3.3 s.
    t = np.arange(75 * SAMPLE_RATE) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * hz * t) for hz in (220.0, 277.2, 329.6))
    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t)
    samples = (0.1 * chord * tremolo + np.random.default_rng(5).normal(0, 0.01, len(t))).astype(np.float32)
    segments = segment_samples(samples)
    check_invariants(segments, samples, 30.0)
    assert 3 <= len(segments) <= 6
    covered = sum(s.speech_s for s in segments)
    assert covered >= 0.7 * 75.0


# --- levels in, the rule's edges --------------------------------------------------------------


def levels(*parts: tuple[float, float]) -> np.ndarray:
    return np.concatenate([np.full(round(s / FRAME_S), db, dtype=np.float32) for db, s in parts])


SPEECH, QUIET, WEAK = -18.0, -120.0, -35.0


def test_hysteresis_keeps_weak_tails_of_loud_runs_and_drops_weak_runs_alone() -> None:
    lv = levels((QUIET, 1.0), (SPEECH, 0.5), (WEAK, 0.4), (QUIET, 1.0), (WEAK, 1.0), (QUIET, 1.0))
    mask = detect_speech(lv, None)
    assert mask[50:95].all()  # loud then weak tail
    assert not mask[145:195].any()  # weak alone
    assert not mask[:50].any()


def test_short_pauses_are_bridged_and_long_ones_are_not() -> None:
    lv = levels((SPEECH, 1.0), (QUIET, 0.1), (SPEECH, 1.0), (QUIET, 0.3), (SPEECH, 1.0))
    mask = detect_speech(lv)
    assert mask[:105].all()
    assert not mask[110:115].any()
    segs = segment_levels(lv)
    assert len(segs) == 1
    assert len(segs[0].speech) == 2
    assert segs[0].speech[0] == (0.0, 2.2) and segs[0].speech[1] == (2.3, 3.4)


def test_padding_stays_inside_the_window_and_the_segment_ends_after_its_speech() -> None:
    lv = levels((QUIET, 0.06), (SPEECH, 1.0), (QUIET, 10.0))
    (seg,) = segment_levels(lv)
    assert seg.start_s == 0.0
    assert seg.end_s == pytest.approx(1.06 + PAD)


def test_long_inner_pause_ends_a_segment() -> None:
    # The pause is measured between padded runs: 3.1 s of quiet is a 2.9-s pause, 3.4 s is 3.2 s.
    lv = levels((SPEECH, 2.0), (QUIET, 3.1), (SPEECH, 2.0), (QUIET, 3.4), (SPEECH, 2.0))
    segs = segment_levels(lv)
    assert [len(s.speech) for s in segs] == [2, 1]
    assert len(segment_levels(lv, params=SegmentParams(max_inner_pause_s=10.0))) == 1


def test_a_loud_floor_makes_thresholds_relative() -> None:
    onset, offset = thresholds(-38.0)
    assert offset == pytest.approx(-32.0) and onset == pytest.approx(-25.0)
    assert thresholds(None) == thresholds(-120.0) == (-30.0, -40.0)
    assert thresholds(-10.0) == (-25.0, -25.0)  # a loud room: no hysteresis, nothing missed
    assert thresholds(-45.0) == (-29.0, -39.0)


def test_thirty_minute_window_of_speech_and_pauses() -> None:
    # 90,000 frames: 7 s talk, 1 s pause, repeated; the limit holds and nothing is left out.
    block = levels((SPEECH, 7.0), (QUIET, 1.0))
    lv = np.tile(block, 225)
    segs = segment_levels(lv)
    assert len(lv) == 90_000
    assert all(s.duration_s <= 30.0 + 1e-9 for s in segs)
    assert len(segs) == 75  # three 7-s talks (+ pads) per segment
    mask = detect_speech(lv)
    covered = np.zeros(len(lv), dtype=bool)
    for s in segs:
        covered[round(s.start_s / FRAME_S) : round(s.end_s / FRAME_S)] = True
    assert not (mask & ~covered).any()


def test_shifted_moves_every_time_and_rounds_to_the_millisecond() -> None:
    seg = Segment(0, 1.0, 5.0, ((1.0, 2.0), (3.0, 5.0)))
    moved = seg.shifted(1800.0004, index=7)
    assert moved == Segment(7, 1801.0, 1805.0, ((1801.0, 1802.0), (1803.0, 1805.0)))
    assert seg.speech_s == pytest.approx(3.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        segment_levels(levels((SPEECH, 1.0)), max_segment_s=0)
    with pytest.raises(ValueError):
        SegmentParams(min_pause_s=-1)
    with pytest.raises(ValueError):
        segment_samples(np.zeros((10, 2), dtype=np.float32))
