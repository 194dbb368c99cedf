"""Window planning: where cuts go, and the coverage check (pure, no audio files)."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.planning import (
    FRAME_S,
    SILENCE_DBFS,
    NoiseFloor,
    choose_cut,
    frame_levels,
    lookback_s,
    silence_threshold,
)
from tests.tiling import CoverageError, check_coverage

SPEECH = -18.0
QUIET = -60.0


def levels(*parts: tuple[float, float]) -> np.ndarray:
    """Frame levels from (dBFS, seconds) parts."""
    return np.concatenate([np.full(round(s / FRAME_S), db) for db, s in parts])


def test_lookback_is_a_quarter_capped_at_two_minutes() -> None:
    assert lookback_s(20.0) == pytest.approx(5.0)
    assert lookback_s(1800.0) == pytest.approx(120.0)
    with pytest.raises(ValueError):
        lookback_s(0.0)


def test_cut_goes_in_the_middle_of_the_only_silence() -> None:
    cut = choose_cut(levels((SPEECH, 2.0), (QUIET, 1.0), (SPEECH, 2.0)))
    assert cut.in_silence
    assert cut.offset_s == pytest.approx(2.5)


def test_longest_silence_wins_over_a_later_shorter_one() -> None:
    cut = choose_cut(levels((SPEECH, 1.0), (QUIET, 1.2), (SPEECH, 1.0), (QUIET, 0.4), (SPEECH, 1.0)))
    assert cut.offset_s == pytest.approx(1.6)


def test_equal_silences_prefer_the_later_one() -> None:
    cut = choose_cut(levels((SPEECH, 1.0), (QUIET, 0.5), (SPEECH, 1.0), (QUIET, 0.5), (SPEECH, 1.0)))
    assert cut.offset_s == pytest.approx(2.75, abs=FRAME_S)


def test_silence_shorter_than_the_minimum_is_not_a_silence() -> None:
    # 0.2 s of quiet is a pause inside a word, not a place to cut: the quietest point is taken.
    cut = choose_cut(levels((SPEECH, 1.0), (QUIET, 0.2), (SPEECH, 1.0)))
    assert not cut.in_silence
    assert 1.0 <= cut.offset_s <= 1.2


def test_silence_at_the_very_end_of_the_range_counts() -> None:
    cut = choose_cut(levels((SPEECH, 3.0), (QUIET, 0.6)))
    assert cut.in_silence
    assert cut.offset_s == pytest.approx(3.3)


def test_without_silence_the_quietest_point_is_taken() -> None:
    lv = levels((-10.0, 2.0), (-22.0, 0.3), (-10.0, 2.0))
    cut = choose_cut(lv)
    assert not cut.in_silence
    assert 2.0 <= cut.offset_s <= 2.3


def test_one_quiet_frame_in_a_loud_stretch_loses_to_a_quieter_stretch() -> None:
    lv = levels((-10.0, 1.0), (-15.0, 0.2), (-10.0, 1.0))
    lv[10] = -80.0  # a single dropout frame
    cut = choose_cut(lv)
    assert 1.0 <= cut.offset_s <= 1.2


def test_constant_level_cuts_at_the_end_of_the_range() -> None:
    cut = choose_cut(np.full(250, -9.0))
    assert not cut.in_silence
    assert cut.offset_s == pytest.approx(250 * FRAME_S - 0.06, abs=FRAME_S)


def test_noisy_room_pauses_count_as_silence_relative_to_the_floor() -> None:
    lv = levels((SPEECH, 2.0), (-34.0, 0.8), (SPEECH, 2.0))
    assert not choose_cut(lv).in_silence  # -34 dBFS is above the absolute threshold
    cut = choose_cut(lv, noise_floor_dbfs=-35.0)
    assert cut.in_silence
    assert cut.offset_s == pytest.approx(2.4)


def test_relative_threshold_never_makes_loud_audio_silent() -> None:
    assert silence_threshold(None) == SILENCE_DBFS
    assert silence_threshold(-90.0) == SILENCE_DBFS
    assert silence_threshold(-35.0) == pytest.approx(-29.0)
    assert silence_threshold(-9.0) == pytest.approx(-25.0)


def test_empty_levels_cut_at_zero() -> None:
    assert choose_cut([]).offset_s == 0.0


def test_frame_levels_of_int16_and_float() -> None:
    full = np.full(640, 32767, dtype=np.int16)
    zero = np.zeros(320, dtype=np.int16)
    lv = frame_levels(np.concatenate([full, zero, full[:100]]), 320)
    assert len(lv) == 3
    assert lv[0] == pytest.approx(0.0, abs=0.01)
    assert lv[2] == pytest.approx(-120.0)
    sine = (0.5 * np.sin(np.arange(3200) * 0.1)).astype(np.float32)
    assert frame_levels(sine, 3200)[0] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)


def test_noise_floor_is_a_low_percentile() -> None:
    floor = NoiseFloor()
    assert floor.dbfs() is None
    floor.add(np.full(900, -20.0))
    floor.add(np.full(100, -45.5))
    assert floor.dbfs() == pytest.approx(-46.0)


def test_coverage_accepts_a_tiling() -> None:
    check_coverage([(0.0, 18.5), (18.5, 38.0), (38.0, 41.0)], max_window_s=20.0, duration_s=41.0)


@pytest.mark.parametrize(
    ("windows", "duration", "message"),
    [
        ([(0.0, 10.0), (10.5, 20.0)], None, "a gap"),
        ([(0.0, 10.0), (9.5, 20.0)], None, "an overlap"),
        ([(0.0, 10.0), (10.0, 31.0)], None, "more than the 20 s allowed"),
        ([(1.0, 10.0)], None, "a gap"),
        ([(0.0, 10.0), (10.0, 10.0)], None, "empty"),
        ([(0.0, 10.0)], 12.0, "lasts 12"),
        ([], None, "no windows"),
    ],
)
def test_coverage_rejects(windows: list[tuple[float, float]], duration: float | None, message: str) -> None:
    with pytest.raises(CoverageError, match=message):
        check_coverage(windows, max_window_s=20.0, duration_s=duration)
