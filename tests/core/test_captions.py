"""Captions (jobs/captions.py) and time formats (jobs/timecodes.py): the cue limits on many texts,
times placed on speech, and SRT/VTT files read back by webvtt-py and srt (by ffmpeg:
tests/inprocess/test_captions_ffmpeg.py)."""

from __future__ import annotations

import html
import itertools
from pathlib import Path

import pytest
import srt
import webvtt

from jobs.captions import (
    CaptionLimits,
    Cue,
    TimedText,
    build_cues,
    render_srt,
    render_vtt,
    stamped,
    timed_paragraphs,
    vtt_escape,
)
from jobs.segmenting import Segment
from jobs.timecodes import clock, srt_time, stamp, vtt_time
from tests.speech import PARAGRAPHS

LIMITS = CaptionLimits()
MS = 1e-3 + 1e-9

LONG = " ".join(PARAGRAPHS)
URL = "https://example.org/a/very/long/path/that/never/ends/and/goes/on/and/on/index.html"
TEXTS = {
    "one-word": "Hello.",
    "paragraph": PARAGRAPHS[0],
    "talk": LONG,
    "no-punctuation": " ".join(["word"] * 120),
    "commas": ", ".join(["one two three"] * 30) + ".",
    "long-words": f"See {URL} and {URL * 2} for details.",
    "no-spaces": "あ" * 200,
    "markup": "Use <b> & </b> or a --> b, then <script>alert(1)</script>. Done &amp; dusted.",
    "short-sentences": " ".join(f"Yes {i}." for i in range(60)),
    "dashes": "We tried — and failed — to measure it – twice -- before lunch.",
}
SHAPES = {
    "normal": (10.0, 40.0, ()),
    "dense": (0.0, 4.0, ()),  # far too much text for the time: many short cues
    "sparse": (100.0, 160.0, ((100.0, 101.5), (130.0, 131.0), (158.0, 160.0))),
    "runs": (5.0, 35.0, ((5.0, 12.0), (12.8, 20.0), (23.0, 35.0))),
}


def words_of(text: str) -> str:
    return "".join(text.split())


def cue_text(cue: Cue) -> str:
    return "".join(cue.text.split())


def check_cues(cues: list[Cue], segments: list[TimedText], limits: CaptionLimits = LIMITS) -> None:
    for cue in cues:
        assert 0 < len(cue.lines) <= limits.max_lines, cue
        assert all(0 < len(line) <= limits.max_line_chars for line in cue.lines), cue
        assert all(line == line.strip() for line in cue.lines), cue
        assert cue.end_s - cue.start_s <= limits.max_cue_s + MS, cue
        assert cue.end_s >= cue.start_s
    for before, after in itertools.pairwise(cues):
        assert before.end_s <= after.start_s + 1e-9, (before, after)
    # Each segment's text, all of it and in order, and its cues inside its bounds.
    position = 0
    for segment in segments:
        expected = words_of(segment.text)
        got = ""
        while position < len(cues) and len(got) < len(expected):
            cue = cues[position]
            assert segment.start_s - MS <= cue.start_s and cue.end_s <= segment.end_s + MS, (cue, segment)
            got += cue_text(cue)
            position += 1
        assert got == expected
    assert position == len(cues)


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("name", TEXTS, ids=list(TEXTS))
def test_limits_hold_and_text_is_kept_in_order(name: str, shape: str) -> None:
    start, end, speech = SHAPES[shape]
    segment = TimedText(start, end, TEXTS[name], speech)
    cues = build_cues([segment])
    check_cues(cues, [segment])
    assert cues[0].start_s == start
    if name == "one-word" and end - start > LIMITS.max_cue_s:
        assert cues[-1].end_s - cues[-1].start_s <= LIMITS.max_cue_s + MS  # a word cannot last 30 s
    elif shape != "sparse":
        assert cues[-1].end_s == end


@pytest.mark.parametrize("limits", [CaptionLimits(3.0, 1, 20), CaptionLimits(5.0, 3, 32), CaptionLimits()])
def test_other_limits_hold_too(limits: CaptionLimits) -> None:
    segments = [
        TimedText(0.0, 28.0, LONG[:600]),
        TimedText(30.0, 31.0, "Thanks."),
        TimedText(31.0, 50.0, URL),
    ]
    cues = build_cues(segments, limits)
    check_cues(cues, segments, limits)


def test_times_are_exact_at_segment_edges_and_monotonic_across_segments() -> None:
    segments = [
        TimedText(0.9, 17.1, " ".join(PARAGRAPHS[:2]), ((0.9, 8.0), (9.2, 17.1))),
        TimedText(21.24, 28.24, PARAGRAPHS[2]),
        TimedText(28.24, 29.0, ""),  # nothing heard: no cue
        TimedText(29.5, 40.0, PARAGRAPHS[3]),
    ]
    cues = build_cues(segments)
    check_cues(cues, [s for s in segments if s.text])
    starts = {c.start_s for c in cues}
    ends = {c.end_s for c in cues}
    assert {0.9, 21.24, 29.5} <= starts
    assert {17.1, 28.24, 40.0} <= ends
    assert not any(c.start_s < 29.0 < c.end_s or 28.24 < c.start_s < 29.5 for c in cues)


def test_cue_times_fall_on_speech_not_in_pauses() -> None:
    # Two runs of speech with a 6-s pause between: no cue starts or ends inside the pause.
    segment = TimedText(0.0, 14.0, LONG[:400], ((0.0, 4.0), (10.0, 14.0)))
    cues = build_cues([segment])
    check_cues(cues, [segment])
    for cue in cues:
        assert not 4.0 < cue.start_s < 10.0, cue
        assert not 4.0 < cue.end_s < 10.0, cue
    # Half the text sits on each run of speech (equal lengths), so about half the cues do.
    on_first = sum(len(cue_text(c)) for c in cues if c.end_s <= 4.0 + MS)
    assert abs(on_first / len(words_of(segment.text)) - 0.5) < 0.15


def test_times_are_proportional_to_text_length() -> None:
    first = "A short opening sentence with some words."
    second = "Then a second sentence that is exactly three times as long, no more, and no less, okay then."
    segment = TimedText(0.0, 6.0, f"{first} {second}")
    cues = build_cues([segment], CaptionLimits(max_cue_s=7.0, max_lines=1, max_line_chars=42))
    boundary = next(c.end_s for c in cues if c.lines[-1].endswith("words."))
    assert boundary == pytest.approx(6.0 * (len(first) + 0.5) / len(segment.text), abs=0.01)


def test_a_word_over_a_long_pause_ends_with_its_run_of_speech() -> None:
    segment = TimedText(0.0, 20.0, "Well", ((0.0, 0.5), (19.5, 20.0)))
    (cue,) = build_cues([segment])
    assert cue.start_s == 0.0 and cue.end_s <= 7.0


def test_cues_end_at_sentence_ends_then_clause_ends_when_they_can() -> None:
    text = (
        "The queue was full of small jobs, and the large ones waited for hours. "
        "So we added a separate queue for the graphics cards, which fixed it."
    )
    cues = build_cues([TimedText(0.0, 9.0, text)])
    assert next(c.text.replace("\n", " ") for c in cues).endswith("waited for hours.")
    text = "The queue was full of small jobs and of many other things, and the large ones waited"
    cues = build_cues([TimedText(0.0, 5.0, text + " " + text)])
    assert cues[0].text.replace("\n", " ").endswith("things,")


def test_two_lines_are_balanced() -> None:
    (cue,) = build_cues([TimedText(0.0, 3.0, "Today I want to talk about batch systems that process audio")])
    first, second = cue.lines
    assert abs(len(first) - len(second)) <= 12
    (cue,) = build_cues([TimedText(0.0, 3.0, "Short text.")])
    assert cue.lines == ("Short text.",)


def test_from_segment_uses_its_speech_runs() -> None:
    seg = Segment(3, 1.0, 11.0, ((1.0, 4.0), (8.0, 11.0))).shifted(1800.0)
    timed = TimedText.from_segment(seg, "Some words here.", speaker="Ada")
    assert timed == TimedText(1801.0, 1811.0, "Some words here.", ((1801.0, 1804.0), (1808.0, 1811.0)), "Ada")


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        build_cues([TimedText(5.0, 4.0, "Backwards.")])
    with pytest.raises(ValueError):
        CaptionLimits(max_cue_s=0)


# --- files ------------------------------------------------------------------------------------


def sample_cues() -> tuple[list[TimedText], list[Cue]]:
    segments = [
        TimedText(0.9, 17.1, " ".join(PARAGRAPHS[:2]), ((0.9, 8.0), (9.2, 17.1)), speaker="Alice Smith"),
        TimedText(21.24, 28.24, TEXTS["markup"], speaker="B <&> C"),
        TimedText(3725.0, 3740.5, PARAGRAPHS[4]),  # past an hour
    ]
    return segments, build_cues(segments)


def test_srt_reads_back_with_the_srt_library(tmp_path: Path) -> None:
    _, cues = sample_cues()
    text = render_srt(cues)
    subtitles = list(srt.parse(text))
    assert len(subtitles) == len(cues)
    for sub, cue in zip(subtitles, cues, strict=True):
        assert sub.start.total_seconds() == pytest.approx(cue.start_s, abs=MS)
        assert sub.end.total_seconds() == pytest.approx(cue.end_s, abs=MS)
        assert sub.content == cue.text.replace("-->", "->")
    assert "01:02:05,000 --> " in text
    assert text.count("-->") == len(cues)  # only timing lines


def test_vtt_reads_back_with_webvtt_py(tmp_path: Path) -> None:
    _, cues = sample_cues()
    text = render_vtt(cues)
    assert text.startswith("WEBVTT\n\n")
    assert text.count("-->") == len(cues)
    captions = webvtt.from_string(text)
    assert len(captions) == len(cues)
    for caption, cue in zip(captions, cues, strict=True):
        assert caption.start_in_seconds == int(cue.start_s)
        assert caption.start == vtt_time(cue.start_s)
        assert caption.end == vtt_time(cue.end_s)
        assert html.unescape(caption.text) == cue.text
        if cue.speaker:
            assert (
                html.unescape(caption.voice).split()
                == cue.speaker.replace("<", " ").replace(">", " ").split()
            )
        else:
            assert caption.voice is None


def test_vtt_escape_leaves_no_markup_or_arrow() -> None:
    escaped = vtt_escape("a --> b <i>x</i> & y")
    assert "-->" not in escaped and "<" not in escaped and ">" not in escaped
    assert html.unescape(escaped) == "a --> b <i>x</i> & y"


# --- time formats and document.md paragraphs --------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "srt_form", "vtt_form", "stamp_form"),
    [
        (0.0, "00:00:00,000", "00:00:00.000", "[00:00:00]"),
        (751.9996, "00:12:32,000", "00:12:32.000", "[00:12:31]"),
        (751.04, "00:12:31,040", "00:12:31.040", "[00:12:31]"),
        (3599.9999, "01:00:00,000", "01:00:00.000", "[00:59:59]"),
        (36000.5, "10:00:00,500", "10:00:00.500", "[10:00:00]"),
        (360000.0, "100:00:00,000", "100:00:00.000", "[100:00:00]"),
    ],
)
def test_time_formats(seconds: float, srt_form: str, vtt_form: str, stamp_form: str) -> None:
    assert srt_time(seconds) == srt_form
    assert vtt_time(seconds) == vtt_form
    assert stamp(seconds) == stamp_form


def test_negative_times_are_refused() -> None:
    with pytest.raises(ValueError):
        clock(-0.5)
    with pytest.raises(ValueError):
        stamp(-1.0)


def test_paragraphs_start_after_long_pauses_and_when_full() -> None:
    segments = [
        TimedText(0.0, 10.0, "One."),
        TimedText(10.5, 20.0, "Two."),
        TimedText(25.0, 30.0, "  Three  "),  # after a 5-s pause
        TimedText(30.2, 31.0, ""),
        TimedText(31.5, 40.0, "x" * 700),
        TimedText(40.1, 45.0, "After a full one."),
    ]
    paragraphs = timed_paragraphs(segments)
    assert paragraphs == [(0.0, "One. Two."), (25.0, "Three " + "x" * 700), (40.1, "After a full one.")]
    assert stamped(751.9, "Hello.") == "[00:12:31] Hello."
