"""What a user may choose for a job, checked once before anything is stored or queued."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import InputError
from jobs.languages import check_language
from jobs.limits import MAX_INSTRUCTIONS_CHARS, MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES
from jobs.presets import get_preset
from jobs.settings import Settings


@dataclass(frozen=True)
class JobOptions:
    instructions: str | None = None
    preset: str | None = None
    language: str | None = None
    window_minutes: float | None = None
    webhook_url: str | None = None

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
        )
