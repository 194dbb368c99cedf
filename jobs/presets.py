"""Presets: prompt templates for window summaries and the overall summary.

Voxtral has no system prompt, so everything here goes into the user turn, with the user's own
instructions after the preset's so that theirs win where the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import InputError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    window: str  # what to write about one window of audio
    overall: str  # how to combine the window summaries


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "conference-talk",
            "a talk by one speaker, often with questions at the end",
            "Summarise this part of a conference talk for someone who missed it: the speaker's "
            "main points, claims and evidence, numbers and names as said, and any questions "
            "from the audience with their answers. Use short paragraphs or bullet points.",
            "Write the overall summary of the talk: its thesis, the key points in the order "
            "they were made, and the conclusions. Then list notable questions and answers.",
        ),
        Preset(
            "panel",
            "several speakers discussing, with a moderator",
            "Summarise this part of a panel discussion: who argued what (by name or role when "
            "it is said), where the panelists agreed and disagreed, and questions from the "
            "moderator or audience.",
            "Write the overall summary of the panel: the topics in order, each panelist's "
            "positions, points of agreement and disagreement, and the takeaways.",
        ),
        Preset(
            "meeting",
            "a working meeting",
            "Summarise this part of a meeting: topics discussed, decisions made, action items "
            "with owners and dates when stated, and open questions.",
            "Write meeting minutes: attendees if named, an agenda-style summary of topics, "
            "all decisions, and a consolidated list of action items with owners and dates.",
        ),
        Preset(
            "lecture",
            "a teacher explaining a subject",
            "Write study notes for this part of a lecture: the concepts introduced, their "
            "definitions, examples and formulas as spoken, and anything flagged as important.",
            "Write the lecture's study notes: an outline of the concepts in order, key "
            "definitions, and a short list of review questions.",
        ),
        Preset(
            "voice-journal",
            "one person speaking their thoughts",
            "Format this part of a voice journal as a journal entry in the speaker's own "
            "voice (first person): what happened, thoughts and feelings, plans. Keep their "
            "wording where it matters; remove filler words.",
            "Write the journal entry for the whole recording in the first person, with a "
            "one-line title, the day's events and reflections, and any plans or to-dos.",
        ),
    )
}

DEFAULT_PRESET = "conference-talk"


def get_preset(name: str | None) -> Preset:
    key = name or DEFAULT_PRESET
    try:
        return PRESETS[key]
    except KeyError:
        known = ", ".join(PRESETS)
        raise InputError(f"unknown preset {key!r}; choose one of: {known}") from None


def window_prompt(
    preset: Preset,
    instructions: str | None,
    index: int,
    span: str,
    vocabulary: tuple[str, ...] = (),
) -> str:
    """A window's summary prompt. Only what is fixed when the window is cut goes in (its place and
    its span), neither the count of windows nor the recording's length (the probe's until the
    split ends, the decoded one after): a window may run while the split goes on, and its prompt,
    hence its document, must not depend on that."""
    opening = f"This audio is part {index + 1} ({span}) of a longer recording."
    return _audio_prompt(opening, preset.window, instructions, vocabulary)


def whole_recording_prompt(
    preset: Preset, instructions: str | None, span: str, vocabulary: tuple[str, ...] = ()
) -> str:
    """The summary of a recording short enough for one window: asked for in the preset's overall
    form at once, so no second, text-only call restates it."""
    opening = f"This audio is a whole recording ({span})."
    return _audio_prompt(opening, preset.overall, instructions, vocabulary)


def _audio_prompt(opening: str, ask: str, instructions: str | None, vocabulary: tuple[str, ...]) -> str:
    """What a summary request carrying audio says: where the audio is, what to write, the user's
    names and terms and instructions (no system prompt: Voxtral takes none)."""
    parts = [opening, ask]
    if vocabulary:
        parts.append(
            "Names and terms that may be said, spelled as the user writes them: " + ", ".join(vocabulary)
        )
    if instructions:
        parts.append(f"Follow these instructions from the user: {instructions.strip()}")
    parts.append("Write only the summary, in the language of the recording unless told otherwise.")
    return "\n\n".join(parts)


def overall_prompt(preset: Preset, instructions: str | None, summaries: list[tuple[str, str]]) -> str:
    body = "\n\n".join(f"[{span}]\n{text.strip()}" for span, text in summaries)
    parts = [
        "Below are summaries of consecutive parts of one recording, in time order.",
        preset.overall,
    ]
    if instructions:
        parts.append(f"Follow these instructions from the user: {instructions.strip()}")
    parts.append("Summaries:\n\n" + body)
    return "\n\n".join(parts)


def merge_prompt(summaries: list[tuple[str, str]]) -> str:
    """Condense a run of part summaries into one when they are too long to reduce at once."""
    body = "\n\n".join(f"[{span}]\n{text.strip()}" for span, text in summaries)
    return (
        "Below are summaries of consecutive parts of one recording, in time order. Merge them "
        "into one summary of the whole stretch, keeping every decision, name, number and "
        "question; drop repetition.\n\n" + body
    )
