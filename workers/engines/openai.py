"""OpenAIEngine: OpenAI's hosted transcription and audio chat models, through the ``openai`` SDK.

How voxbatch's requests map onto the API (docs/models.md, "Hosted engines"):

- transcripts: ``client.audio.transcriptions.create`` (``POST /v1/audio/transcriptions``, multipart)
  with ``VOXBATCH_OPENAI_TRANSCRIBE_MODEL``:
  - ``whisper-1``: ``response_format="verbose_json"`` and ``timestamp_granularities=["segment"]``:
    the answer's segments carry times, so the window step sends whole windows (timed path);
  - models named ``*-diarize``: ``response_format="diarized_json"`` and ``chunking_strategy="auto"``
    (required above 30 s): segments carry times and ``speaker``; these models take no ``prompt``;
  - other models (``gpt-4o-transcribe``, ``gpt-4o-mini-transcribe``): plain JSON without times, so
    the window step sends them our own speech segments (≤ 30 s);
  the job's vocabulary goes into ``prompt`` ("guide the model's style"), the language into ``language``;
- summaries: ``client.chat.completions.create`` with ``VOXBATCH_OPENAI_CHAT_MODEL`` (an audio model,
  ``gpt-4o-audio-preview``) and the audio as ``input_audio`` in MP3 (the chat API takes WAV or MP3
  only); text-only prompts go to ``VOXBATCH_OPENAI_TEXT_MODEL``;
- caps: 25 MB per uploaded file and 1,500 s per request for the gpt-4o transcription models, so
  ``max_audio_s()`` reports 1,400 s and the upload size is checked before sending;
- 429 and 5xx: the SDK's retries (``max_retries``), which wait out ``retry-after-ms`` /
  ``Retry-After`` when the server sends them, then EngineUnavailable.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai

from jobs.engine import Capabilities, Hints, TimedPiece
from jobs.errors import EngineRejected, InputError, WindowTooLarge
from jobs.settings import Settings
from workers.engines.answers import as_error, error_message
from workers.engines.caps import MIB, Caps
from workers.engines.hosted import mp3_bytes

MAX_S = 1400.0
MAX_UPLOAD_BYTES = 25 * MIB
SUMMARY_MAX_TOKENS = 2048
COMPLETE_MAX_TOKENS = 4096


def vocabulary_prompt(vocabulary: tuple[str, ...]) -> str:
    return "Names and terms in this recording: " + ", ".join(vocabulary) + "." if vocabulary else ""


class OpenAIEngine:
    """OpenAI's API at ``settings.openai_url`` (default the SDK's) with ``settings.openai_api_key``."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        if not settings.openai_api_key:
            raise InputError("the openai engine needs VOXBATCH_OPENAI_API_KEY")
        self.model = settings.openai_chat_model
        self.transcribe_model = settings.openai_transcribe_model
        self.text_model = settings.openai_text_model
        self.diarizes = self.transcribe_model.endswith("-diarize")
        self.capabilities = Capabilities(
            timestamps=self.transcribe_model.startswith("whisper") or self.diarizes,
            speakers=self.diarizes,
            vocabulary=True,
        )
        self._server = f"OpenAI API at {settings.openai_url or 'api.openai.com'}"
        self._client = openai.OpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_url or None,
            max_retries=settings.engine_retries,
            timeout=settings.request_timeout_s,
        )
        self._caps = Caps(self.name, MAX_S, MAX_UPLOAD_BYTES)

    def max_audio_s(self) -> float | None:
        return self._caps.max_audio_s()

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        self._caps.admit(audio)
        fields: dict[str, Any] = {"response_format": "json"}
        if language:
            fields["language"] = language
        if vocabulary and not self.diarizes:
            fields["prompt"] = vocabulary_prompt(vocabulary)
        if self.diarizes:
            fields["chunking_strategy"] = "auto"
        answer = self._call(
            lambda: self._client.audio.transcriptions.create(
                model=self.transcribe_model, file=audio, temperature=0.0, **fields
            )
        )
        return str(getattr(answer, "text", answer)).strip()

    def transcribe_timed(self, audio: Path, hints: Hints) -> list[TimedPiece]:
        self._caps.admit(audio)
        fields: dict[str, Any] = {}
        if hints.language:
            fields["language"] = hints.language
        if self.diarizes:
            fields.update(response_format="diarized_json", chunking_strategy="auto")
        else:
            fields.update(response_format="verbose_json", timestamp_granularities=["segment"])
            if hints.vocabulary:
                fields["prompt"] = vocabulary_prompt(hints.vocabulary)
        answer = self._call(
            lambda: self._client.audio.transcriptions.create(
                model=self.transcribe_model, file=audio, temperature=0.0, **fields
            )
        )
        segments = getattr(answer, "segments", None)
        if segments is None:
            if not str(getattr(answer, "text", "")).strip():
                return []
            raise EngineRejected(f"{self._server} answered a timed transcription without segments")
        return [
            TimedPiece(
                float(seg.start),
                float(seg.end),
                seg.text,
                getattr(seg, "speaker", None) if hints.speakers else None,
            )
            for seg in segments
        ]

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        self._caps.admit(audio)
        data = base64.b64encode(mp3_bytes(audio)).decode("ascii")
        content = [
            {"type": "text", "text": prompt},
            {"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}},
        ]
        return self._chat(self.model, content, SUMMARY_MAX_TOKENS, modalities=["text"])

    def complete(self, prompt: str) -> str:
        return self._chat(self.text_model, prompt, COMPLETE_MAX_TOKENS)

    def _chat(self, model: str, content: Any, max_tokens: int, **extra: Any) -> str:
        answer = self._call(
            lambda: self._client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": content}],
                temperature=0.2,
                max_completion_tokens=max_tokens,
                **extra,
            )
        )
        try:
            text = answer.choices[0].message.content
        except (AttributeError, IndexError) as exc:
            raise EngineRejected(f"{self._server} answered without a message") from exc
        if not isinstance(text, str):
            raise EngineRejected(f"{self._server} answered without text")
        return text.strip()

    def _call(self, request: Any) -> Any:
        try:
            return request()
        except openai.APIStatusError as exc:
            error = as_error(self._server, exc.status_code, error_message(exc.response.text))
        except openai.APIConnectionError as exc:  # includes timeouts
            error = as_error(self._server, None, f"{type(exc).__name__}: {exc}")
        if isinstance(error, WindowTooLarge):
            self._caps.learn(error)
        raise error
