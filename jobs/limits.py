"""Limits on what a job may ask for: one definition each, used by the CLI, the API and the core."""

from __future__ import annotations

# Voxtral's context is 32k tokens at 12.5 audio tokens/s padded to 30 s chunks: 30 min is the
# longest window that leaves room for a transcript (see docs/architecture.md, "Windows").
MAX_WINDOW_MINUTES = 30
MIN_WINDOW_MINUTES = 1
# The instructions go into every window's prompt: 8,000 characters is ~2,000 tokens of 32k.
MAX_INSTRUCTIONS_CHARS = 8000
# Names and terms of a job's vocabulary: Mistral's context_bias takes at most 100 entries.
MAX_VOCABULARY_TERMS = 100
MAX_VOCABULARY_TERM_CHARS = 100
# A collection's name: also a folder of the drop folder's inbox (inbox/<collection>/...).
MAX_COLLECTION_NAME_CHARS = 100
# A title given at submission (a manifest's row).
MAX_TITLE_CHARS = 300
# A tenant's retention (finished jobs deleted after that many days): ten years at most.
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650
