"""Captions from timed segments: cues for transcript.srt and transcript.vtt (pure).

Voxtral on vLLM gives no timestamps, only a segment's text; the times come from the segments
(``jobs.segmenting``): each segment's start and end, and the runs of speech inside it. The rule:

* A cue lasts at most 7 s and holds at most 2 lines of at most 42 characters (``CaptionLimits``).
  Words longer than a line are broken across lines (the only place a word is cut).
* A cue ends, by preference, at a sentence end (``. ! ? …``), then at a clause end (``, ; :`` or a
  dash), then at the last word that fits, as long as the preferred break keeps a reasonable share of
  what would fit (30% for a sentence end, 50% for a clause end), so cues are neither tiny nor ragged.
  Two lines are balanced (equal lengths, a clause end as the line break when there is one).
* Times: the first cue of a segment starts exactly at the segment's start and the last ends exactly
  at its end. Inside a segment, text is laid on the segment's speech runs (its inner pauses take no
  text) in proportion to its length in characters, so a cue boundary is the time at which that share
  of the segment's speech has passed. This is an estimate, not word alignment. A cue of a single
  word that would last over 7 s (a word laid across a long pause) ends with the run of speech it
  starts in (at most 7 s); when that is the segment's last cue, it ends before the segment does.
* Cues of one segment touch (no flicker between them); cues never overlap, and are in time order.

SRT: ``HH:MM:SS,mmm``, cues numbered from 1, text as is except that ``-->`` becomes ``->`` (some
parsers take a line holding ``-->`` for a timing line). WebVTT: the ``WEBVTT`` header, ``HH:MM:SS.mmm``,
``&``, ``<`` and ``>`` escaped (so no ``-->`` can appear in a cue), and a voice tag ``<v Name>`` on
cues whose segment names a speaker (the name on one line, without ``<`` or ``>``).

``timed_paragraphs`` groups segments into the paragraphs of document.md's transcript, each with the
time it starts (render it with ``jobs.timecodes.stamp``: ``[00:12:31]``).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from jobs.segmenting import Segment
from jobs.timecodes import srt_time, stamp, vtt_time

SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*$")
CLAUSE_END = re.compile(r"[,;:]+[\"'”’»)\]]*$")
DASHES = frozenset(["-", "–", "—", "--"])
ABBREVIATIONS = frozenset(["mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "e.g.", "i.e.", "etc.", "vs.", "no."])
SENTENCE_MIN_SHARE = 0.3
CLAUSE_MIN_SHARE = 0.5
PARAGRAPH_PAUSE_S = 2.0
PARAGRAPH_CHARS = 600


@dataclass(frozen=True)
class CaptionLimits:
    max_cue_s: float = 7.0
    max_lines: int = 2
    max_line_chars: int = 42

    def __post_init__(self) -> None:
        if self.max_cue_s <= 0 or self.max_lines < 1 or self.max_line_chars < 1:
            raise ValueError(f"caption limits must be positive: {self}")


DEFAULT_LIMITS = CaptionLimits()


@dataclass(frozen=True)
class TimedText:
    """A segment's text and times, on the recording's clock.

    ``speech``: the runs of speech inside ``[start_s, end_s]`` (``Segment.speech``, shifted); empty
    means the whole segment is speech. ``speaker``: a name, when an engine gives one.
    """

    start_s: float
    end_s: float
    text: str
    speech: tuple[tuple[float, float], ...] = ()
    speaker: str | None = None

    @classmethod
    def from_segment(cls, segment: Segment, text: str, speaker: str | None = None) -> TimedText:
        """A segment of ``jobs.segmenting`` (already on the recording's clock) and its text."""
        return cls(segment.start_s, segment.end_s, text, segment.speech, speaker)


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]
    speaker: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# --- cues -----------------------------------------------------------------------------------


def build_cues(segments: Iterable[TimedText], limits: CaptionLimits = DEFAULT_LIMITS) -> list[Cue]:
    """Caption cues for segments in time order (segments must not overlap)."""
    cues: list[Cue] = []
    for segment in segments:
        if segment.end_s < segment.start_s:
            raise ValueError(f"segment ends before it starts: {segment.start_s}–{segment.end_s}")
        floor = cues[-1].end_s if cues else 0.0
        for cue in _segment_cues(segment, limits):
            start = max(cue.start_s, floor)
            cues.append(Cue(start, max(cue.end_s, start), cue.lines, cue.speaker))
            floor = cues[-1].end_s
    return cues


def _segment_cues(segment: TimedText, limits: CaptionLimits) -> list[Cue]:
    tokens = _tokens(segment.text, limits.max_line_chars)
    if not tokens:
        return []
    # Character offsets of each token's start and end in the text as rendered on one line.
    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for i, (word, glued) in enumerate(tokens):
        position += 0 if (i == 0 or glued) else 1
        starts.append(position)
        position += len(word)
        ends.append(position)
    timeline = _Timeline(segment)
    total = position

    def boundary(e: int) -> float:
        """Text position of the break after token e-1 (the middle of the following space)."""
        return (ends[e - 1] + starts[e]) / 2 if e < len(tokens) else float(total)

    def end_time(e: int) -> float:
        if e >= len(tokens):
            return round(segment.end_s, 3)
        return round(timeline.at(boundary(e) / total, end=True), 3)

    cues: list[Cue] = []
    s = 0
    start_time = round(segment.start_s, 3)
    while s < len(tokens):
        e = _longest_fit(tokens, s, limits, functools.partial(_duration, end_time, start_time))
        if e == s:  # one token that would last too long: end it with its run of speech
            e = s + 1
            end = round(min(timeline.run_end(start_time), start_time + limits.max_cue_s), 3)
        else:
            if e < len(tokens):
                e = _preferred_break(tokens, s, e)
            end = end_time(e)
        lines = _wrap(tokens[s:e], limits)
        cues.append(Cue(start_time, end, tuple(lines), segment.speaker))
        if e < len(tokens):
            start_time = max(end, round(timeline.at(boundary(e) / total, end=False), 3))
        s = e
    return cues


def _duration(end_time: Callable[[int], float], start_time: float, e: int) -> float:
    return end_time(e) - start_time


def _longest_fit(
    tokens: list[tuple[str, bool]], s: int, limits: CaptionLimits, duration: Callable[[int], float]
) -> int:
    """The largest e > s such that tokens[s:e] fit the lines and last at most max_cue_s, or s."""
    best = s
    for e in range(s + 1, len(tokens) + 1):
        if not _fits(tokens[s:e], limits) or duration(e) > limits.max_cue_s + 1e-9:
            break
        best = e
    return best


def _preferred_break(tokens: list[tuple[str, bool]], s: int, e_max: int) -> int:
    """Where to end a cue that could hold tokens[s:e_max]: a sentence end, a clause end, or e_max."""

    def chars(e: int) -> int:
        return sum(len(w) + 1 for w, _ in tokens[s:e])

    full = chars(e_max)
    for kind, share in (("sentence", SENTENCE_MIN_SHARE), ("clause", CLAUSE_MIN_SHARE)):
        for e in range(e_max, s, -1):
            if tokens[e][1]:
                continue  # never break inside a word
            if _break_kind(tokens[e - 1][0]) == kind and chars(e) >= share * full:
                return e
    while e_max - 1 > s and tokens[e_max][1]:
        e_max -= 1  # keep the pieces of a broken word together when the line allows
    return e_max


def _break_kind(word: str) -> str | None:
    lower = word.lower()
    if SENTENCE_END.search(word) and lower not in ABBREVIATIONS:
        return "sentence"
    if CLAUSE_END.search(word) or word in DASHES:
        return "clause"
    return None


def _tokens(text: str, max_line_chars: int) -> list[tuple[str, bool]]:
    """Words, with words longer than a line cut into line-long pieces; (piece, glued to previous)."""
    out: list[tuple[str, bool]] = []
    for word in text.split():
        for k in range(0, len(word), max_line_chars):
            out.append((word[k : k + max_line_chars], k > 0))
    return out


def _join(tokens: Sequence[tuple[str, bool]]) -> str:
    return "".join(("" if (i == 0 or glued) else " ") + w for i, (w, glued) in enumerate(tokens))


def _greedy_lines(tokens: Sequence[tuple[str, bool]], width: int) -> list[list[tuple[str, bool]]]:
    lines: list[list[tuple[str, bool]]] = []
    for token in tokens:
        if lines and len(_join([*lines[-1], token])) <= width:
            lines[-1].append(token)
        else:
            lines.append([token])
    return lines


def _fits(tokens: Sequence[tuple[str, bool]], limits: CaptionLimits) -> bool:
    return len(_greedy_lines(tokens, limits.max_line_chars)) <= limits.max_lines


def _wrap(tokens: Sequence[tuple[str, bool]], limits: CaptionLimits) -> list[str]:
    """Lines of a cue: one if it fits, else two balanced ones (or greedy lines past two)."""
    width = limits.max_line_chars
    one = _join(tokens)
    if len(one) <= width or limits.max_lines == 1:
        return [one]
    if limits.max_lines > 2:
        return [_join(line) for line in _greedy_lines(tokens, width)]
    best: tuple[float, int] | None = None
    for k in range(1, len(tokens)):
        first, second = _join(tokens[:k]), _join(tokens[k:])
        if len(first) > width or len(second) > width:
            continue
        score = abs(len(first) - len(second)) - (8 if _break_kind(tokens[k - 1][0]) else 0)
        score += 40 if tokens[k][1] else 0  # a word cut across the lines only when it must be
        if best is None or score < best[0]:
            best = (score, k)
    if best is None:  # cannot happen for tokens that fit; keep greedy lines to be safe
        return [_join(line) for line in _greedy_lines(tokens, width)]
    k = best[1]
    return [_join(tokens[:k]), _join(tokens[k:])]


class _Timeline:
    """Maps a share of a segment's text to a time on its speech runs."""

    def __init__(self, segment: TimedText) -> None:
        lo, hi = segment.start_s, segment.end_s
        runs = sorted((max(a, lo), min(b, hi)) for a, b in segment.speech)
        merged: list[tuple[float, float]] = []
        for a, b in runs:
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        if not merged:
            merged = [(lo, hi)]
        self.runs = merged
        self.cumulative = [0.0]
        for a, b in merged:
            self.cumulative.append(self.cumulative[-1] + (b - a))

    def run_end(self, t: float) -> float:
        """The end of the run holding ``t`` (of the next run when ``t`` is in a pause)."""
        for _, b in self.runs:
            if t < b:
                return b
        return self.runs[-1][1]

    def at(self, share: float, end: bool) -> float:
        """The time when ``share`` of the speech has passed. On the edge between two runs, ``end``
        picks the end of the earlier run (a cue ending there), else the start of the next one."""
        total = self.cumulative[-1]
        if total <= 0:
            return self.runs[0][0]
        target = min(max(share, 0.0), 1.0) * total
        if end:
            i = max(0, bisect.bisect_left(self.cumulative, target) - 1)
        else:
            i = min(len(self.runs) - 1, bisect.bisect_right(self.cumulative, target) - 1)
        a, _ = self.runs[i]
        return a + (target - self.cumulative[i])


# --- files ------------------------------------------------------------------------------------


def render_srt(cues: Sequence[Cue]) -> str:
    """A SubRip file: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank line after each."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        lines = [_srt_safe(line) for line in cue.lines]
        blocks.append(f"{number}\n{srt_time(cue.start_s)} --> {srt_time(cue.end_s)}\n" + "\n".join(lines))
    return "".join(block + "\n\n" for block in blocks)


def render_vtt(cues: Sequence[Cue]) -> str:
    """A WebVTT file: header, numbered cues, escaped text, ``<v Name>`` when a cue has a speaker."""
    out = ["WEBVTT\n\n"]
    for number, cue in enumerate(cues, start=1):
        lines = [vtt_escape(line) for line in cue.lines]
        if cue.speaker and lines:
            lines[0] = f"<v {voice_name(cue.speaker)}>{lines[0]}"
        out.append(
            f"{number}\n{vtt_time(cue.start_s)} --> {vtt_time(cue.end_s)}\n" + "\n".join(lines) + "\n\n"
        )
    return "".join(out)


def voice_name(speaker: str) -> str:
    """A speaker's name as a WebVTT voice annotation: one line, no ``<``/``>`` (ffmpeg's reader
    cuts a voice tag at the first ``>``, escaped or not), ``&`` escaped."""
    return vtt_escape(" ".join(speaker.replace("<", " ").replace(">", " ").split()))


def vtt_escape(text: str) -> str:
    """Escape what WebVTT cue text requires: ``&``, ``<``, ``>`` (and so any ``-->``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _srt_safe(line: str) -> str:
    return re.sub(r"-{2,}>", "->", line)


# --- document.md ----------------------------------------------------------------------------


def timed_paragraphs(
    segments: Iterable[TimedText],
    pause_s: float = PARAGRAPH_PAUSE_S,
    max_chars: int = PARAGRAPH_CHARS,
) -> list[tuple[float, str]]:
    """Transcript paragraphs with the time each starts: a new paragraph after a pause of
    ``pause_s`` or more between segments, or once a paragraph holds ``max_chars``; empty segments
    are skipped."""
    paragraphs: list[tuple[float, list[str], int]] = []
    previous_end: float | None = None
    for segment in segments:
        text = " ".join(segment.text.split())
        if not text:
            continue
        new = (
            not paragraphs
            or previous_end is None
            or segment.start_s - previous_end >= pause_s
            or paragraphs[-1][2] >= max_chars
        )
        if new:
            paragraphs.append((segment.start_s, [text], len(text)))
        else:
            start, parts, size = paragraphs[-1]
            paragraphs[-1] = (start, [*parts, text], size + 1 + len(text))
        previous_end = segment.end_s
    return [(start, " ".join(parts)) for start, parts, _ in paragraphs]


def stamped(start_s: float, text: str) -> str:
    """``[00:12:31] text``: a paragraph of document.md's transcript."""
    return f"{stamp(start_s)} {text}"
