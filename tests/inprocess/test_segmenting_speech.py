"""Speech segments inside a window (jobs/segmenting.py) on generated speech with known pauses:
espeak-ng speech decoded by ffmpeg, rendered in memory (nothing cached on disk). The rules on
numpy-made sound alone: tests/core/test_segmenting.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jobs.planning import FRAME_S, frame_levels
from jobs.segmenting import SAMPLE_RATE, segment_samples, thresholds
from tests.segments import FRAME, PAD, check_invariants, inside_any, loud_frames, spans
from tests.speech import PARAGRAPHS, Marker, Part, Silence, Speech, have_tools, render

needs_espeak = pytest.mark.skipif(not have_tools(), reason="espeak-ng and ffmpeg are needed")


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
