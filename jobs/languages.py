"""Language codes a user may pass with ``--language`` (ISO 639-1).

Voxtral is strongest in ``NATIVE``. vLLM accepts Voxtral's nine and, with a warning, Whisper's other
codes; then mistral-common validates the code as ISO 639-1 (``LanguageAlpha2``); anything else is a
400. ``ACCEPTED`` is therefore Whisper's list restricted to ISO
639-1: ``haw`` and ``yue`` have no two-letter code and ``jw`` is not ISO's (Javanese is ``jv``,
which Whisper's list lacks, so vLLM refuses it too). The real server refused all of them;
tests/realvllm/test_server.py sends it every code here. We refuse unknown codes before any work
starts.
"""

from __future__ import annotations

from jobs.errors import InputError

NATIVE = frozenset({"ar", "nl", "en", "fr", "de", "hi", "it", "pt", "es"})

# Whisper's language codes that are also ISO 639-1 codes.
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
        "he",
        "hr",
        "ht",
        "hu",
        "hy",
        "id",
        "is",
        "ja",
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
