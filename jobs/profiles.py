"""Model profiles: what each audio language model served by vLLM can hear, and how to ask it.

A profile is chosen from ``VOXBATCH_MODEL`` (matched against the Hugging Face repo name) or named
outright by ``VOXBATCH_MODEL_PROFILE``. It decides:

- how a segment is transcribed: vLLM's ``/v1/audio/transcriptions`` when the model implements
  ``SupportsTranscription``, else a chat request carrying the segment and ``transcribe_prompt``;
- how long a segment may be (``segment_s``: the longest item the model hears whole, at most 30 s);
- how long a window may be and how its summary is made (``max_window_s``, ``summary_source``): the
  summary hears the window in one chat request when the model can take that much audio (items per
  prompt x longest item, within its context), else it is written from the segment transcripts;
- whether a system message may ride beside audio;
- the ``vllm serve`` arguments the model needs (``workers/vllm_launch.py``).

Every fact is read from vLLM 0.32's source (``vllm/model_executor/models/<model>.py``) or the
model card; docs/models.md cites them. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

MAX_WINDOW_S = 1800.0  # jobs.limits.MAX_WINDOW_MINUTES: documents are sectioned by windows of ≤ 30 min
MAX_SEGMENT_S = 30.0  # segments are the unit of timing in captions (jobs.segmenting)
# Room a window's summary request keeps for its text: the prompt with the user's instructions
# (≤ 8,000 characters, ~2,000 tokens) and an answer of up to 2,048 tokens.
SUMMARY_RESERVE_TOKENS = 4096
# A model that cannot hear at least this much in one request summarises from transcripts instead:
# windows shorter than this make documents of many tiny sections.
MIN_HEARD_WINDOW_S = 120.0
# Transcript tokens per second of speech, counted high (fast speech is ~4-5): sizes windows whose
# summary is written from their transcript, and caps a transcript's answer (beyond it, a runaway).
TRANSCRIPT_TOKENS_PER_S = 6.0

SummarySource = Literal["audio", "transcripts"]

VERBATIM_PROMPT = (
    "Transcribe the audio verbatim, word for word, in the language that is spoken. "
    "Write only the words that are said: no translation, no summary, no commentary, "
    "no timestamps. If nothing is said, answer with nothing."
)


@dataclass(frozen=True)
class ModelProfile:
    """One model family as vLLM serves it."""

    name: str  # VOXBATCH_MODEL_PROFILE value
    title: str
    repos: tuple[str, ...]  # Hugging Face repos it covers (the first is the default to serve)
    match: tuple[str, ...]  # lower-case substrings of a repo name that select it
    transcription_endpoint: bool  # SupportsTranscription: /v1/audio/transcriptions exists
    max_item_s: float | None  # longest audio item heard whole; None: the context is the only limit
    items_per_prompt: int  # audio items voxbatch sends in one chat (and --limit-mm-per-prompt)
    vllm_item_limit: int | None  # vLLM's own cap (get_supported_mm_limits); None: 999 by default
    system_with_audio: bool  # a system message may sit beside audio
    audio_tokens_per_s: float
    context_tokens: int  # the --max-model-len voxbatch serves it with
    languages: frozenset[str]  # speech languages (ISO 639 codes) named by the model or its card
    serve_args: tuple[str, ...] = ()  # extra `vllm serve` arguments the model needs
    pad_item_to_s: float | None = None  # items padded to a multiple of this many seconds
    transcribe_prompt: str = VERBATIM_PROMPT  # used when there is no transcription endpoint
    system_prompt: str | None = None  # sent only where system_with_audio
    mm_limits_extra: Mapping[str, int] = field(default_factory=dict)  # e.g. {"image": 0}
    lora_module: str | None = None  # "NAME=subfolder" of the model's snapshot, served as a LoRA
    truncates_items: bool = False  # vLLM's processor silently drops audio past max_item_s
    notes: str = ""

    # --- sizes ----------------------------------------------------------------------------

    def audio_tokens(self, duration_s: float) -> int:
        """Prompt tokens one item of ``duration_s`` costs (counted high)."""
        seconds = max(duration_s, 0.0)
        if self.pad_item_to_s:
            seconds = max(1, math.ceil(seconds / self.pad_item_to_s)) * self.pad_item_to_s
        return max(1, math.ceil(seconds * self.audio_tokens_per_s))

    def context_audio_s(self, reserve_tokens: int = SUMMARY_RESERVE_TOKENS) -> float:
        """The most audio whose tokens leave ``reserve_tokens`` of the context free."""
        seconds = max(0, self.context_tokens - reserve_tokens) / self.audio_tokens_per_s
        if self.pad_item_to_s:
            seconds = math.floor(seconds / self.pad_item_to_s) * self.pad_item_to_s
        return float(seconds)

    def chat_audio_s(self) -> float:
        """The most audio one chat request can carry: items x longest item, within the context."""
        heard = self.context_audio_s()
        if self.max_item_s is not None:
            heard = min(heard, self.items_per_prompt * self.max_item_s)
        return heard

    def summary_source(self) -> SummarySource:
        return "audio" if self.chat_audio_s() >= MIN_HEARD_WINDOW_S else "transcripts"

    def max_window_s(self) -> float:
        """The longest window: what one summary request can take, at most 30 min."""
        if self.summary_source() == "audio":
            return min(MAX_WINDOW_S, float(math.floor(self.chat_audio_s())))
        text_s = max(0, self.context_tokens - SUMMARY_RESERVE_TOKENS) / TRANSCRIPT_TOKENS_PER_S
        return min(MAX_WINDOW_S, float(math.floor(text_s)))

    def segment_s(self) -> float:
        """The longest speech segment: one item the model hears whole, at most 30 s."""
        if self.max_item_s is None:
            return MAX_SEGMENT_S
        return min(MAX_SEGMENT_S, self.max_item_s)

    def summary_item_s(self) -> float | None:
        """How long each audio item of a summary request may be (None: the whole window is one)."""
        return self.max_item_s

    def mm_limits(self) -> dict[str, int]:
        return {"audio": self.items_per_prompt, **self.mm_limits_extra}


VOXTRAL_LANGUAGES = frozenset(["ar", "nl", "en", "fr", "de", "hi", "it", "pt", "es"])
QWEN3_OMNI_LANGUAGES = frozenset(
    [
        "en",
        "zh",
        "ko",
        "ja",
        "de",
        "ru",
        "it",
        "fr",
        "es",
        "pt",
        "ms",
        "nl",
        "id",
        "tr",
        "vi",
        "yue",
        "ar",
        "ur",
    ]
)
KIMI_LANGUAGES = frozenset(["zh", "en", "ja", "ko", "de", "fr", "es", "it", "pt", "ru", "ar"])
PHI4_LANGUAGES = frozenset(["en", "zh", "de", "fr", "it", "ja", "es", "pt"])
MISTRAL_FORMAT = (
    "--tokenizer-mode",
    "mistral",
    "--config-format",
    "mistral",
    "--load-format",
    "mistral",
)

VOXTRAL_SMALL = ModelProfile(
    name="voxtral-small",
    title="Voxtral Small 24B (2507)",
    repos=("mistralai/Voxtral-Small-24B-2507",),
    match=("voxtral-small",),
    transcription_endpoint=True,
    max_item_s=None,  # one window is one item: 30 min transcription, 40 min understanding (card)
    items_per_prompt=1,
    vllm_item_limit=5,
    system_with_audio=False,
    audio_tokens_per_s=12.5,
    pad_item_to_s=30.0,
    context_tokens=32768,
    languages=VOXTRAL_LANGUAGES,
    serve_args=MISTRAL_FORMAT,
)
# The same architecture and serving as Small, 3B parameters.
VOXTRAL_MINI = replace(
    VOXTRAL_SMALL,
    name="voxtral-mini",
    title="Voxtral Mini 3B (2507)",
    repos=("mistralai/Voxtral-Mini-3B-2507",),
    match=("voxtral-mini",),
)
QWEN2_AUDIO = ModelProfile(
    name="qwen2-audio",
    title="Qwen2-Audio 7B Instruct",
    repos=("Qwen/Qwen2-Audio-7B-Instruct",),
    match=("qwen2-audio",),
    transcription_endpoint=False,
    max_item_s=30.0,  # the processor truncates each item to the feature extractor's 30 s
    items_per_prompt=6,
    vllm_item_limit=None,
    system_with_audio=True,
    audio_tokens_per_s=25.0,  # 3000 mel frames -> 750 tokens per 30 s
    context_tokens=8192,
    languages=frozenset(["en", "zh", "yue", "fr", "de", "it", "es", "ja"]),
    system_prompt="You are a helpful assistant.",
    truncates_items=True,
    notes="audio over 30 s per item is cut off silently",
)
PHI4_MULTIMODAL = ModelProfile(
    name="phi4-multimodal",
    title="Phi-4-multimodal-instruct",
    repos=("microsoft/Phi-4-multimodal-instruct",),
    match=("phi-4-multimodal", "phi4-multimodal", "phi-4-mm"),
    transcription_endpoint=False,
    max_item_s=300.0,  # no cap in vLLM's processor; voxbatch's conservative choice
    items_per_prompt=6,
    vllm_item_limit=None,
    system_with_audio=True,
    audio_tokens_per_s=12.5,  # 10 ms mel frames / compression_rate 8
    context_tokens=32768,  # the card's 128k context, served at 32k
    languages=PHI4_LANGUAGES,
    serve_args=(
        "--trust-remote-code",
        "--enable-lora",
        "--max-lora-rank",
        "320",
        "--max-loras",
        "1",
    ),
    transcribe_prompt="Transcribe the audio clip into text.",
    lora_module="speech=speech-lora",
    notes="the speech LoRA must be served: --lora-modules speech=<snapshot>/speech-lora, "
    "and VOXBATCH_MODEL=speech",
)
ULTRAVOX = ModelProfile(
    name="ultravox",
    title="Ultravox (fixie-ai/ultravox-*)",
    repos=("fixie-ai/ultravox-v0_5-llama-3_1-8b", "fixie-ai/ultravox-v0_5-llama-3_2-1b"),
    match=("ultravox",),
    transcription_endpoint=False,
    max_item_s=480.0,  # longer items are split into 30-s encoder chunks; 16 chunks are profiled
    items_per_prompt=4,
    vllm_item_limit=None,
    system_with_audio=True,
    audio_tokens_per_s=6.25,  # 50 Hz Whisper frames stacked by 8
    context_tokens=32768,
    languages=frozenset(),  # the card lists many; none is checked here
    serve_args=("--trust-remote-code",),
)
KIMI_AUDIO = ModelProfile(
    name="kimi-audio",
    title="Kimi-Audio 7B Instruct",
    repos=("moonshotai/Kimi-Audio-7B-Instruct",),
    match=("kimi-audio",),
    transcription_endpoint=True,
    max_item_s=30.0,  # max_audio_clip_s = the Whisper extractor's chunk_length
    items_per_prompt=1,
    vllm_item_limit=1,
    system_with_audio=False,
    audio_tokens_per_s=13.0,  # 13 tokens per 100 mel frames
    context_tokens=8192,
    languages=KIMI_LANGUAGES,
    serve_args=("--trust-remote-code",),
    notes="one audio per prompt: window summaries are written from the segment transcripts",
)
QWEN2_5_OMNI = ModelProfile(
    name="qwen2.5-omni",
    title="Qwen2.5-Omni thinker (7B, 3B)",
    repos=("Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B"),
    match=("qwen2.5-omni",),
    transcription_endpoint=False,
    max_item_s=300.0,  # chunk_length 300 in preprocessor_config.json; padded and truncated to it
    truncates_items=True,
    items_per_prompt=4,
    vllm_item_limit=None,
    system_with_audio=True,
    audio_tokens_per_s=25.0,
    context_tokens=32768,
    languages=frozenset(["en", "zh"]),
    mm_limits_extra={"image": 0, "video": 0},
    system_prompt=(
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
        "perceiving auditory and visual inputs, as well as generating text and speech."
    ),
)
QWEN3_OMNI = ModelProfile(
    name="qwen3-omni",
    title="Qwen3-Omni-30B-A3B thinker (Instruct, Thinking, Captioner)",
    repos=(
        "Qwen/Qwen3-Omni-30B-A3B-Instruct",
        "Qwen/Qwen3-Omni-30B-A3B-Thinking",
        "Qwen/Qwen3-Omni-30B-A3B-Captioner",
    ),
    match=("qwen3-omni",),
    transcription_endpoint=True,
    max_item_s=300.0,  # max_audio_clip_s = chunk_length 300, no chunking: longer is refused
    items_per_prompt=6,
    vllm_item_limit=None,
    system_with_audio=True,
    audio_tokens_per_s=13.0,
    context_tokens=32768,  # 65,536 in config.json, served at 32k
    languages=QWEN3_OMNI_LANGUAGES,
    mm_limits_extra={"image": 0, "video": 0},
)

PROFILES: tuple[ModelProfile, ...] = (
    VOXTRAL_SMALL,
    VOXTRAL_MINI,
    QWEN2_AUDIO,
    PHI4_MULTIMODAL,
    ULTRAVOX,
    KIMI_AUDIO,
    QWEN2_5_OMNI,
    QWEN3_OMNI,
)
DEFAULT_PROFILE = VOXTRAL_SMALL
BY_NAME: dict[str, ModelProfile] = {p.name: p for p in PROFILES}


class UnknownProfile(ValueError):
    """VOXBATCH_MODEL_PROFILE names no profile."""


def get_profile(name: str) -> ModelProfile:
    try:
        return BY_NAME[name.strip().lower()]
    except KeyError:
        raise UnknownProfile(f"unknown model profile {name!r}; use one of {', '.join(BY_NAME)}") from None


def match_model(model: str) -> ModelProfile | None:
    """The profile whose repo names match ``model`` (a repo id, a path or a served name)."""
    lowered = model.strip().lower()
    for profile in PROFILES:
        if any(m in lowered for m in profile.match):
            return profile
    return None


def profile_for(model: str, explicit: str | None = None) -> ModelProfile:
    """``explicit`` (VOXBATCH_MODEL_PROFILE) when set, else the profile matching ``model``, else
    Voxtral Small's (the default model; a served name such as a LoRA's says nothing)."""
    if explicit:
        return get_profile(explicit)
    return match_model(model) or DEFAULT_PROFILE
