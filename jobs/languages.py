"""Language codes a user may pass with ``--language`` (ISO 639-1).

Voxtral is strongest in ``NATIVE``; vLLM accepts Whisper's other codes with a warning and rejects
anything else with a 400, so we refuse unknown codes before any work starts.
"""

from __future__ import annotations

from jobs.errors import InputError

NATIVE = frozenset({"ar", "nl", "en", "fr", "de", "hi", "it", "pt", "es"})

# Whisper's language codes (the set vLLM's validate_language accepts with a warning).
ACCEPTED = NATIVE | frozenset(
    [
        "af",
        "am",
        "as",
        "az",
        "ba",
        "be",
        "bg",
        "bn",
        "bo",
        "br",
        "bs",
        "ca",
        "cs",
        "cy",
        "da",
        "el",
        "et",
        "eu",
        "fa",
        "fi",
        "fo",
        "gl",
        "gu",
        "ha",
        "haw",
        "he",
        "hr",
        "ht",
        "hu",
        "hy",
        "id",
        "is",
        "ja",
        "jw",
        "ka",
        "kk",
        "km",
        "kn",
        "ko",
        "la",
        "lb",
        "ln",
        "lo",
        "lt",
        "lv",
        "mg",
        "mi",
        "mk",
        "ml",
        "mn",
        "mr",
        "ms",
        "mt",
        "my",
        "ne",
        "nn",
        "no",
        "oc",
        "pa",
        "pl",
        "ps",
        "ro",
        "ru",
        "sa",
        "sd",
        "si",
        "sk",
        "sl",
        "sn",
        "so",
        "sq",
        "sr",
        "su",
        "sv",
        "sw",
        "ta",
        "te",
        "tg",
        "th",
        "tk",
        "tl",
        "tr",
        "tt",
        "uk",
        "ur",
        "uz",
        "vi",
        "yi",
        "yo",
        "yue",
        "zh",
    ]
)


def check_language(code: str | None) -> str | None:
    if code is None or code == "" or code == "auto":
        return None
    norm = code.strip().lower()
    if norm not in ACCEPTED:
        raise InputError(
            f"unknown language code {code!r}; use a two-letter ISO 639-1 code such as en, fr, de"
        )
    return norm
