"""MistralEngine: Voxtral on Mistral's hosted API, through the ``mistralai`` SDK.

How voxbatch's requests map onto the API (docs/models.md):

- transcripts: ``client.audio.transcriptions.complete`` (``POST /v1/audio/transcriptions``,
  multipart) with the transcription model (Voxtral Mini Transcribe), ``temperature=0``,
  ``timestamp_granularities=["segment"]`` so the answer's ``segments`` carry ``start``/``end``,
  ``diarize=true`` when the job asks for speakers (each segment then has a ``speaker_id``), and
  ``context_bias`` with the job's vocabulary (at most 100 names and terms). Mistral documents
  timestamps as "not compatible with ``language``": the job's language is therefore not sent on the
  timed path (the model detects it), only on plain transcripts;
- summaries: ``client.chat.complete`` with the chat model and the audio as an ``input_audio`` chunk
  (a plain base64 string), the instructions in the same user turn;
- caps: about 15 min of audio per transcription on Voxtral Mini Transcribe 2507 and 20 min per chat
  request, so ``max_audio_s()`` reports 15 min and windows are cut to fit before they are sent; a
  refusal naming a smaller duration lowers it;
- 429 and 5xx: the SDK's retries (exponential backoff; a ``Retry-After`` or ``retry-after-ms`` header
  is waited out as given), then EngineUnavailable.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx2
from mistralai.client import Mistral, errors
from mistralai.client.utils import BackoffStrategy, RetryConfig

from jobs.engine import Capabilities, Hints, TimedPiece
from jobs.errors import EngineRejected, InputError, WindowTooLarge
from jobs.settings import Settings
from workers.engines.answers import as_error, error_message
from workers.engines.caps import Caps

logger = logging.getLogger(__name__)

TRANSCRIBE_MAX_S = 15 * 60.0
CHAT_MAX_S = 20 * 60.0
SUMMARY_MAX_TOKENS = 2048
COMPLETE_MAX_TOKENS = 4096


def sdk_server_url(url: str) -> str:
    """The SDK appends ``/v1/...`` itself; VOXBATCH_MISTRAL_URL is documented with the ``/v1``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class MistralEngine:
    """Mistral's hosted API at ``settings.mistral_url`` with ``settings.mistral_api_key``."""

    name = "mistral"
    capabilities = Capabilities(timestamps=True, speakers=True, vocabulary=True)

    def __init__(self, settings: Settings, *, backoff_base_s: float = 1.0) -> None:
        if not settings.mistral_api_key:
            raise InputError("the mistral engine needs VOXBATCH_MISTRAL_API_KEY")
        self.model = settings.mistral_chat_model
        self.transcribe_model = settings.mistral_transcribe_model
        self._server = f"Mistral API at {settings.mistral_url}"
        self._retries = RetryConfig(
            "backoff",
            BackoffStrategy(
                initial_interval=max(1, int(backoff_base_s * 1000)),
                max_interval=60_000,
                exponent=2.0,
                max_elapsed_time=int(max(1, settings.engine_retries) * 60_000),
                jitter_ms=max(1, int(backoff_base_s * 1000)),
            ),
            retry_connection_errors=True,
        )
        self._client = Mistral(
            api_key=settings.mistral_api_key,
            server_url=sdk_server_url(settings.mistral_url),
            retry_config=self._retries,
            timeout_ms=int(settings.request_timeout_s * 1000),
        )
        self._caps = Caps(self.name, min(TRANSCRIBE_MAX_S, CHAT_MAX_S))

    # --- the Engine protocol ---------------------------------------------------------------

    def max_audio_s(self) -> float | None:
        return self._caps.max_audio_s()

    def transcribe(self, audio: Any, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        self._caps.admit(audio)
        answer = self._call(
            lambda: self._client.audio.transcriptions.complete(
                model=self.transcribe_model,
                file={"file_name": audio.name, "content": audio.read_bytes()},
                language=language,
                temperature=0.0,
                context_bias=list(vocabulary) or None,
            )
        )
        return str(answer.text).strip()

    def transcribe_timed(self, audio: Any, hints: Hints) -> list[TimedPiece]:
        self._caps.admit(audio)
        answer = self._call(
            lambda: self._client.audio.transcriptions.complete(
                model=self.transcribe_model,
                file={"file_name": audio.name, "content": audio.read_bytes()},
                temperature=0.0,
                timestamp_granularities=["segment"],
                diarize=hints.speakers,
                context_bias=list(hints.vocabulary) or None,
            )
        )
        if not answer.segments:
            text = str(answer.text).strip()
            if not text:
                return []
            raise EngineRejected(f"{self._server} answered a timed transcription without segments")
        return [
            TimedPiece(
                float(seg.start or 0.0),
                float(seg.end if seg.end is not None else seg.start or 0.0),
                seg.text,
                seg.speaker_id if isinstance(seg.speaker_id, str) and hints.speakers else None,
            )
            for seg in answer.segments
        ]

    def summarize_audio(self, audio: Any, prompt: str) -> str:
        self._caps.admit(audio)
        data = base64.b64encode(audio.read_bytes()).decode("ascii")
        content = [{"type": "input_audio", "input_audio": data}, {"type": "text", "text": prompt}]
        return self._chat(content, SUMMARY_MAX_TOKENS)

    def complete(self, prompt: str) -> str:
        return self._chat([{"type": "text", "text": prompt}], COMPLETE_MAX_TOKENS)

    # --- the SDK's answers as voxbatch errors --------------------------------------------------

    def _chat(self, content: list[dict[str, Any]], max_tokens: int) -> str:
        answer = self._call(
            lambda: self._client.chat.complete(
                model=self.model,
                messages=[{"role": "user", "content": content}],  # type: ignore[arg-type]
                temperature=0.2,
                top_p=0.95,
                max_tokens=max_tokens,
            )
        )
        try:
            text = answer.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise EngineRejected(f"{self._server} answered without a message") from exc
        if isinstance(text, list):
            text = "".join(getattr(chunk, "text", "") or "" for chunk in text)
        if not isinstance(text, str):
            raise EngineRejected(f"{self._server} answered without text")
        return text.strip()

    def _call(self, request: Any) -> Any:
        try:
            return request()
        except errors.MistralError as exc:
            error = as_error(self._server, exc.status_code, error_message(exc.body))
        except (httpx2.HTTPError, errors.NoResponseError) as exc:
            error = as_error(self._server, None, f"{type(exc).__name__}: {exc}")
        if isinstance(error, WindowTooLarge):
            self._caps.learn(error)
        raise error
