"""Speech segments inside a window (jobs/segmenting.py): generated speech with known pauses, tones,
noise and silence, rendered in memory with numpy (espeak-ng for the speech, nothing cached on disk)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jobs.planning import FRAME_S, frame_levels
from jobs.segmenting import (
    SAMPLE_RATE,
    Segment,
    SegmentParams,
    detect_speech,
    segment_levels,
    segment_samples,
    thresholds,
    window_levels,
)
from tests.speech import PARAGRAPHS, Marker, Part, Silence, Speech, Tone, have_tools, render

needs_espeak = pytest.mark.skipif(not have_tools(), reason="espeak-ng and ffmpeg are needed")

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


# --- generated speech with known pauses -------------------------------------------------------


TALK: list[Part] = [
    Silence(0.7),
    Speech(PARAGRAPHS[0]),
    Silence(1.2),
    Speech(PARAGRAPHS[1]),
    Silence(5.0),
    Speech(PARAGRAPHS[2]),
    Silence(0.6),
]


@needs_espeak
def test_speech_with_known_pauses_gives_segments_that_start_and_end_in_them() -> None:
    samples, _ = render(TALK)
    laid = spans(TALK)
    segments = segment_samples(samples)
    check_invariants(segments, samples, 30.0)
    # A 1.2-s pause is merged over; the 5-s pause ends a segment and is not carried by it.
    speech = [(a, b) for part, a, b in laid if isinstance(part, Speech)]
    assert len(segments) == 2
    assert segments[0].start_s < speech[0][1] and segments[0].end_s > speech[1][0]
    assert segments[1].start_s > speech[1][1] and segments[1].end_s <= laid[-1][2]
    long_pause = laid[4]
    assert segments[0].end_s <= long_pause[1] + PAD + FRAME_S
    assert segments[1].start_s >= long_pause[2] - PAD - FRAME_S
    # The trailing silence is not carried either.
    assert segments[1].end_s <= laid[-1][1] + PAD + FRAME_S
    # Every loud frame of every paragraph is inside a segment.
    for a, b in speech:
        for frame in loud_frames(samples, a, b):
            assert inside_any((frame + 0.5) * FRAME_S, segments)
    # The 1.2-s pause is a gap between the first segment's speech runs (captions skip it).
    gaps = [(x[1], y[0]) for x, y in zip(segments[0].speech, segments[0].speech[1:], strict=False)]
    pause = laid[2]
    assert any(g0 <= pause[1] + PAD + FRAME_S and g1 >= pause[2] - PAD - FRAME_S for g0, g1 in gaps)


@needs_espeak
@pytest.mark.parametrize("limit", [4.0, 8.0, 12.0])
def test_a_small_limit_cuts_in_pauses_between_words(limit: float) -> None:
    samples, _ = render(TALK)
    segments = segment_samples(samples, max_segment_s=limit)
    check_invariants(segments, samples, limit)
    assert len(segments) >= 24.0 / limit
    _, offset = thresholds(None)
    levels = frame_levels(samples, FRAME)
    for before, after in itertools.pairwise(segments):
        if before.end_s == after.start_s:
            continue  # a run longer than the limit, cut at its quietest point (not expected here)
        # The frame right after a segment and the one right before the next are quiet.
        assert levels[round(before.end_s / FRAME_S)] < offset
        assert levels[round(after.start_s / FRAME_S) - 1] < offset


@needs_espeak
def test_a_segment_closes_at_the_longest_pause_in_its_second_half() -> None:
    # Sentences separated by a long (1.5 s) and a short (0.4 s) pause; the limit holds three of
    # the four sentences, so greedy merging would close after the third, at the short pause.
    parts: list[Part] = [
        Speech("The first sentence is here, and it is a little longer than the others."),
        Silence(0.4),
        Speech("A second one follows."),
        Silence(1.5),
        Speech("Then a third."),
        Silence(0.4),
        Speech("And a fourth sentence closes it, after a short pause."),
    ]
    samples, _ = render(parts)
    laid = spans(parts)
    limit = laid[5][2] + 0.5  # the first three sentences fit, the fourth does not
    assert laid[2][2] > limit / 2
    greedy = segment_samples(samples, max_segment_s=limit)
    check_invariants(greedy, samples, limit)
    assert laid[2][1] < greedy[0].end_s < laid[4][1]  # after the second sentence, not the third
    assert greedy[1].start_s > laid[3][1]


@needs_espeak
def test_marker_tones_between_pauses_are_inside_segments() -> None:
    parts: list[Part] = [Speech(PARAGRAPHS[3]), Silence(0.8), Marker(5), Silence(4.0), Marker(6)]
    samples, _ = render(parts)
    laid = spans(parts)
    segments = segment_samples(samples)
    check_invariants(segments, samples, 30.0)
    for part, a, b in laid:
        if isinstance(part, Marker):
            middle = (a + b) / 2
            assert inside_any(middle, segments)


@needs_espeak
def test_int16_and_float_samples_give_the_same_segments() -> None:
    samples, _ = render(TALK)
    as_int = np.round(samples * 32767).astype(np.int16)
    assert segment_samples(as_int, max_segment_s=8.0) == segment_samples(samples, max_segment_s=8.0)


@needs_espeak
def test_speech_over_a_noisy_room_is_found_relative_to_the_noise_floor() -> None:
    samples, _ = render(TALK)
    rng = np.random.default_rng(3)
    noisy = (samples + rng.normal(0.0, 0.01, len(samples))).astype(np.float32)  # hiss at -40 dBFS
    segments = segment_samples(noisy)
    check_invariants(segments, noisy, 30.0)
    assert len(segments) == 2  # the 5-s pause is still a pause in the hiss


@needs_espeak
def test_unbroken_speech_is_cut_at_its_quietest_point() -> None:
    # espeak speech with every quiet frame removed: ~33 s without a single pause.
    one, _ = render([Speech(" ".join(PARAGRAPHS[:4]))])
    levels = frame_levels(one, FRAME)
    frames = one[: len(levels) * FRAME].reshape(-1, FRAME)[levels >= -30.0]
    samples = np.concatenate([frames.ravel()] * 2)
    assert len(samples) / SAMPLE_RATE > 30
    limit = 12.0
    segments = segment_samples(samples, max_segment_s=limit)
    check_invariants(segments, samples, limit)
    assert len(segments) >= 3
    levels = frame_levels(samples, FRAME).astype(np.float64)
    power = 10.0 ** (levels / 10.0)
    smooth = np.convolve(power, np.ones(5) / 5, mode="same")
    for before, after in itertools.pairwise(segments):
        assert before.end_s == after.start_s  # touching pieces of one run
        cut = round(before.end_s / FRAME_S)
        lo = round((before.start_s + limit / 2) / FRAME_S)
        hi = round((before.start_s + limit) / FRAME_S)
        # The cut is the quietest 100 ms of its range (within a frame).
        assert smooth[cut - 3 : cut + 3].min() <= smooth[lo:hi].min() + 1e-12


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
