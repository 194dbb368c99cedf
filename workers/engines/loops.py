"""Repetition-loop detection for model output.

Voxtral, like Whisper, can get stuck repeating a word or a sentence on music, noise or long
silence until it runs out of tokens. Two signals, as Whisper uses them:

- the zlib compression ratio of the text: ordinary speech compresses about 2:1; a loop far more;
- the longest run of one word n-gram repeated back to back ("the the the", or one sentence again
  and again).

A loop is a long run, or a shorter run in text that also compresses too well. A short run alone
("no, no, no") is speech, and a high ratio alone (lists of similar words) is not enough.

Text written without spaces (Chinese, Japanese, Thai: "这么这么这么…") is one long "word"; it is
compared character by character instead (real vLLM serving Voxtral looped exactly so).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

COMPRESSION_RATIO_LIMIT = 2.4
MIN_CHARS_FOR_RATIO = 200
MAX_UNIT_WORDS = 30
SPACELESS_WORD_CHARS = 20  # words longer than this on average: a script without spaces
LONG_RUN = 20  # repetitions that are a loop whatever the ratio
SHORT_RUN = 4  # repetitions that are a loop when the ratio is also high...
SHORT_RUN_SHARE = 0.3  # ...and the run covers this share of the words


@dataclass(frozen=True)
class Repeat:
    """The longest back-to-back repetition: ``unit`` words repeated ``times`` times from ``start``."""

    unit: int
    times: int
    start: int

    @property
    def words(self) -> int:
        return self.unit * self.times


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


def longest_repeat(words: list[str], max_unit: int = MAX_UNIT_WORDS) -> Repeat:
    """The n-gram (n <= ``max_unit``) with the most consecutive repetitions, ties to the shorter.

    For a unit of ``u`` words, ``k`` back-to-back copies are a run of ``(k - 1) * u`` positions
    where ``words[i] == words[i + u]``, so one linear pass per unit size finds every run.
    """
    best = Repeat(unit=1, times=1 if words else 0, start=0)
    n = len(words)
    for unit in range(1, min(max_unit, n // 2) + 1):
        run = 0
        for i in range(n - unit):
            if words[i] == words[i + unit]:
                run += 1
                times = run // unit + 1
                if times > best.times:
                    best = Repeat(unit=unit, times=times, start=i - run + 1)
            else:
                run = 0
    return best


def units(text: str) -> list[str]:
    """Words, or characters (spaces dropped) for text in a script written without spaces."""
    words = text.lower().split()
    if words and sum(map(len, words)) / len(words) > SPACELESS_WORD_CHARS:
        return [c for c in "".join(words)]
    return words


def is_loop(text: str) -> bool:
    """True when ``text`` looks like a degenerate repetition rather than a transcript."""
    words = units(text)
    if len(words) < SHORT_RUN * 2:
        return False
    repeat = longest_repeat(words)
    if repeat.times >= LONG_RUN:
        return True
    if repeat.times < SHORT_RUN or len(text) < MIN_CHARS_FOR_RATIO:
        return False
    return compression_ratio(text) > COMPRESSION_RATIO_LIMIT and repeat.words >= SHORT_RUN_SHARE * len(words)
