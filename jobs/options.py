"""What a user may choose for a job, checked once before anything is stored or queued."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import InputError
from jobs.languages import check_language
from jobs.limits import (
    MAX_INSTRUCTIONS_CHARS,
    MAX_TITLE_CHARS,
    MAX_VOCABULARY_TERM_CHARS,
    MAX_VOCABULARY_TERMS,
    MAX_WINDOW_MINUTES,
    MIN_WINDOW_MINUTES,
)
from jobs.models import Priority
from jobs.presets import get_preset
from jobs.settings import Settings


@dataclass(frozen=True)
class JobOptions:
    instructions: str | None = None
    preset: str | None = None
    language: str | None = None
    window_minutes: float | None = None
    webhook_url: str | None = None
    # Names and terms, comma- or newline-separated ("Voxtral, Kubernetes"); stored one per line.
    vocabulary: str | None = None
    # interactive (default) or batch: which work goes first (jobs.models.Priority).
    priority: str | None = None
    # The collection the job joins (its id or its name; jobs/collections.with_collection fills the
    # options it shares and leaves the id here), and the talk's title for its document.
    collection: str | None = None
    title: str | None = None
    # Which events the webhook gets: window.done, job.done (comma-separated or a list); default
    # job.done only.
    webhook_events: str | list[str] | None = None

    def validated(self, settings: Settings) -> JobOptions:
        preset = get_preset(self.preset).name
        minutes = self.window_minutes if self.window_minutes is not None else settings.window_minutes
        if not MIN_WINDOW_MINUTES <= minutes <= MAX_WINDOW_MINUTES:
            raise InputError(
                f"--window-minutes must be between {MIN_WINDOW_MINUTES} and {MAX_WINDOW_MINUTES} "
                f"(Voxtral's context holds at most {MAX_WINDOW_MINUTES} minutes of audio), not {minutes:g}"
            )
        instructions = (self.instructions or "").strip() or None
        if instructions and len(instructions) > MAX_INSTRUCTIONS_CHARS:
            raise InputError(f"instructions are longer than {MAX_INSTRUCTIONS_CHARS} characters")
        return JobOptions(
            instructions=instructions,
            preset=preset,
            language=check_language(self.language),
            window_minutes=float(minutes),
            webhook_url=self.webhook_url,
            vocabulary=check_vocabulary(self.vocabulary),
            priority=check_priority(self.priority),
            collection=self.collection,
            title=check_title(self.title),
            webhook_events=check_webhook_events(self.webhook_events),
        )


def check_title(value: str | None) -> str | None:
    title = " ".join((value or "").split())
    if len(title) > MAX_TITLE_CHARS:
        raise InputError(f"the title is longer than {MAX_TITLE_CHARS} characters")
    if any(ord(c) < 32 for c in title):
        raise InputError("the title holds a control character")
    return title or None


WINDOW_DONE = "window.done"
JOB_DONE = "job.done"
WEBHOOK_EVENTS = (WINDOW_DONE, JOB_DONE)


def check_webhook_events(value: str | list[str] | None) -> str | None:
    """The events as stored (comma-separated, in WEBHOOK_EVENTS' order), None for the default
    (job.done only); InputError naming the choices for anything else."""
    raw = value.split(",") if isinstance(value, str) else list(value or [])
    names = {str(v).strip().lower() for v in raw if str(v).strip()}
    unknown = sorted(names - set(WEBHOOK_EVENTS))
    if unknown:
        raise InputError(
            f"webhook_events may hold {' and '.join(WEBHOOK_EVENTS)}, not {', '.join(unknown)[:80]!r}"
        )
    if not names or names == {JOB_DONE}:
        return None
    return ",".join(e for e in WEBHOOK_EVENTS if e in names)


def webhook_events_of(stored: str | None) -> tuple[str, ...]:
    """A job's webhook events from its stored column."""
    return tuple(stored.split(",")) if stored else (JOB_DONE,)


def check_priority(value: str | None) -> Priority:
    """``interactive`` when absent; InputError naming the choices for anything else."""
    text = (value or "").strip().lower()
    if not text:
        return Priority.interactive
    try:
        return Priority(text)
    except ValueError:
        raise InputError(
            f"priority must be {' or '.join(p.value for p in Priority)}, not {str(value)[:40]!r}"
        ) from None


def parse_vocabulary(text: str | None) -> tuple[str, ...]:
    """The terms of a vocabulary: split on commas and new lines, spaces collapsed, duplicates and
    empty entries dropped, order kept."""
    terms: list[str] = []
    for raw in (text or "").replace("\n", ",").split(","):
        term = " ".join(raw.split())
        if term and term not in terms:
            terms.append(term)
    return tuple(terms)


def check_vocabulary(text: str | None) -> str | None:
    """The vocabulary as stored (one term per line), or InputError naming the limit it breaks."""
    terms = parse_vocabulary(text)
    if len(terms) > MAX_VOCABULARY_TERMS:
        raise InputError(f"the vocabulary has {len(terms)} terms; at most {MAX_VOCABULARY_TERMS} are allowed")
    for term in terms:
        if len(term) > MAX_VOCABULARY_TERM_CHARS:
            raise InputError(
                f"the vocabulary term {term[:40]!r}... is longer than {MAX_VOCABULARY_TERM_CHARS} characters"
            )
        if any(ord(c) < 32 or c in "<>" for c in term):
            raise InputError(f"the vocabulary term {term[:40]!r} holds a control character or < >")
    return "\n".join(terms) or None
