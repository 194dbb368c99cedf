"""Regenerate tests/data/sample-talk.mp3: a short "conference talk" spoken by espeak-ng.

About two minutes of English speech in paragraphs separated by natural pauses, encoded as 40 kbps
mono MP3 (well under 1 MB) for the README demo. Run from the repository root:

    .venv/bin/python -m tests.data.make_sample
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.speech import Part, Silence, Speech, build_recording

OUTPUT = Path(__file__).with_name("sample-talk.mp3")
PAUSE_S = 1.4

TALK = [
    "Hello everyone, and welcome to this short talk about long recordings. My name is Alex, and "
    "for the last year my team has been turning hours of meetings into documents people read.",
    "Let me start with the problem. Our company records every planning meeting, every customer "
    "interview, and every conference session. Nobody listens to them again. They are too long.",
    "So we built a pipeline. It splits each recording into windows of about half an hour, always "
    "in a pause, so that no sentence is cut in the middle. Each window goes to a speech model.",
    "The model writes a transcript and a summary of its window, guided by the instructions of the "
    "person who asked. A product manager wants decisions. A researcher wants quotes.",
    "At the end, the summaries are combined into one document, with a section for each part of "
    "the recording and its time range, so you can jump back to the audio when you need to.",
    "The hardest part was not the model. It was the plumbing. Uploads of several gigabytes, "
    "workers that restart in the middle of a job, and servers that refuse audio longer than ten "
    "minutes unless you raise a limit.",
    "We also learned to distrust silence and music. Given a long stretch of either, a speech model "
    "may start repeating itself, so every transcript is checked for loops before it is kept.",
    "What did we learn? First, cut in silence. Second, never hold a whole recording in memory. "
    "Third, keep the database as the single source of truth, and let every step run twice safely.",
    "That is all I have for today. Thank you for listening, and I am happy to take your questions.",
]


def talk_parts() -> list[Part]:
    parts: list[Part] = [Silence(0.5)]
    for paragraph in TALK:
        parts += [Speech(paragraph, speed=165), Silence(PAUSE_S)]
    return parts


def main() -> None:
    build_recording(
        talk_parts(),
        OUTPUT,
        codec_args=["-c:a", "libmp3lame", "-b:a", "40k", "-metadata", "title=voxbatch sample talk"],
    )
    print(OUTPUT)


if __name__ == "__main__":
    main()
