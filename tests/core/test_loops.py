"""Repetition-loop detection: loops are caught, ordinary and test transcripts are not."""

from __future__ import annotations

import pytest

from tests import markers
from workers.engines.loops import compression_ratio, is_loop, longest_repeat

SPEECH = (
    "Good morning everyone and thank you for coming. Today we will look at the budget for next "
    "year, the hiring plan for the second quarter and the move to the new office. Maria will "
    "start with the numbers, then Tom will explain why the office move was delayed by a month. "
    "Please keep your questions until the end, we have about forty minutes."
)


def test_single_word_loop() -> None:
    assert is_loop("so we started the " + " ".join(["the"] * 200))


def test_sentence_loop() -> None:
    assert is_loop("Welcome. " + "I went to the market and bought some bread. " * 10)


def test_long_loop_after_real_speech() -> None:
    assert is_loop(SPEECH + " " + "thank you " * 60)


def test_ordinary_speech_is_not_a_loop() -> None:
    assert not is_loop(SPEECH)
    assert compression_ratio(SPEECH) < 2.4


def test_emphatic_repetition_is_not_a_loop() -> None:
    assert not is_loop(SPEECH + " No, no, no, no. " + SPEECH[:120])


def test_marker_transcripts_are_not_loops_though_they_compress_well() -> None:
    text = markers.words(list(range(120)))
    assert compression_ratio(text) > 2.4
    assert not is_loop(text)


def test_short_or_empty_text() -> None:
    assert not is_loop("")
    assert not is_loop("the the the")


@pytest.mark.parametrize(("unit", "times"), [(1, 25), (3, 20), (12, 21)])
def test_longest_repeat_finds_unit_and_count(unit: int, times: int) -> None:
    phrase = [f"w{i}" for i in range(unit)]
    words = ["intro", "words"] + phrase * times + ["outro"]
    found = longest_repeat(words)
    assert (found.unit, found.times, found.start) == (unit, times, 2)
