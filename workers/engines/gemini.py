"""GeminiEngine: Google's Gemini API (audio understanding), through the ``google-genai`` SDK.

How voxbatch's requests map onto the API (docs/models.md, "Hosted engines"):

- audio: inline (``inlineData``) when the request stays under the API's 20 MB inline limit; above it
  the file goes through the Files API (``client.files.upload``: the resumable upload protocol), is
  waited on until ``ACTIVE``, referenced as ``fileData`` and deleted afterwards;
- transcripts: ``client.models.generate_content`` with the audio and a transcription prompt asking
  for JSON (``response_mime_type="application/json"`` and a response schema): a list of segments with
  ``start_s``, ``end_s``, ``text`` and, when the job asks for speakers, ``speaker``; the job's
  vocabulary and language go into the prompt. Gemini's times come from the model, not from an
  aligner: they are approximate;
- summaries: ``generate_content`` with the audio and the instructions; text prompts without audio;
- caps: 9.5 h of audio per prompt, far above a 30-min window: ``max_audio_s()`` reports none and a
  refusal naming a duration lowers it;
- 429 and 5xx: google-genai does not read Google's retry hints, so the engine retries itself
  (``VOXBATCH_ENGINE_RETRIES``) and waits what the answer asks for: the ``google.rpc.RetryInfo``
  detail's ``retryDelay`` or a ``Retry-After`` header, else exponential backoff with jitter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import httpx2
from google import genai
from google.genai import errors, types

from jobs.engine import Capabilities, Hints, TimedPiece
from jobs.errors import EngineRejected, EngineUnavailable, InputError, WindowTooLarge
from jobs.settings import Settings
from workers.engines.answers import as_error
from workers.engines.audio_parts import audio_mime
from workers.engines.caps import MIB, Caps
from workers.engines.hosted import retry_delay_s
from workers.engines.http import backoff_s

logger = logging.getLogger(__name__)

T = TypeVar("T")
INLINE_MAX_BYTES = 14 * MIB  # base64 grows it by a third: the request stays under 20 MB
FILE_WAIT_S = 300.0
MAX_RETRY_WAIT_S = 120.0

TRANSCRIBE_PROMPT = (
    "Transcribe this audio verbatim, in the language spoken. Answer with JSON only: a list of "
    'segments in time order, each {{"start_s": seconds from the start of this audio, "end_s": '
    'seconds, "text": the words said{speaker}}}. A segment is one sentence or one pause-free '
    "stretch of speech, at most 30 seconds."
)
SPEAKER_FIELD = ', "speaker": a label such as "A", "B", the same label for the same voice'


class GeminiEngine:
    """Gemini at ``settings.gemini_url`` (default the SDK's) with ``settings.gemini_api_key``."""

    name = "gemini"
    capabilities = Capabilities(timestamps=True, speakers=True, vocabulary=True)

    def __init__(self, settings: Settings, *, backoff_base_s: float = 1.0) -> None:
        if not settings.gemini_api_key:
            raise InputError("the gemini engine needs VOXBATCH_GEMINI_API_KEY")
        self.model = settings.gemini_model
        self.inline_max_bytes = INLINE_MAX_BYTES
        self._retries = settings.engine_retries
        self._backoff_base_s = backoff_base_s
        self._server = f"Gemini API at {settings.gemini_url or 'generativelanguage.googleapis.com'}"
        options = types.HttpOptions(
            base_url=settings.gemini_url or None,
            api_version="v1beta",  # the Files API and audio understanding live there
            timeout=int(settings.request_timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),  # retried here, with the server's hints
        )
        self._client = genai.Client(api_key=settings.gemini_api_key, http_options=options)
        self._caps = Caps(self.name, None)

    def max_audio_s(self) -> float | None:
        return self._caps.max_audio_s()

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        hints = Hints(language=language, vocabulary=vocabulary)
        return " ".join(p.text for p in self.transcribe_timed(audio, hints))

    def transcribe_timed(self, audio: Path, hints: Hints) -> list[TimedPiece]:
        prompt = TRANSCRIBE_PROMPT.format(speaker=SPEAKER_FIELD if hints.speakers else "")
        if hints.language:
            prompt += f" The language is {hints.language}."
        if hints.vocabulary:
            prompt += " Spell these names and terms as written here: " + ", ".join(hints.vocabulary) + "."
        schema = {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "start_s": {"type": "NUMBER"},
                    "end_s": {"type": "NUMBER"},
                    "text": {"type": "STRING"},
                    **({"speaker": {"type": "STRING"}} if hints.speakers else {}),
                },
                "required": ["start_s", "end_s", "text"],
            },
        }
        config = types.GenerateContentConfig(
            temperature=0.0, response_mime_type="application/json", response_schema=schema
        )
        text = self._with_audio(audio, prompt, config)
        try:
            raw = json.loads(text or "[]")
            return [
                TimedPiece(
                    float(s["start_s"]),
                    float(s["end_s"]),
                    str(s["text"]),
                    str(s["speaker"]) if hints.speakers and s.get("speaker") else None,
                )
                for s in raw
            ]
        except (ValueError, TypeError, KeyError) as exc:
            raise EngineRejected(
                f"{self._server} answered the transcript with malformed JSON: {exc}"
            ) from exc

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        return self._with_audio(audio, prompt, types.GenerateContentConfig(temperature=0.2, top_p=0.95))

    def complete(self, prompt: str) -> str:
        config = types.GenerateContentConfig(temperature=0.2)
        answer = self._call(
            lambda: self._client.models.generate_content(model=self.model, contents=prompt, config=config)
        )
        return self._text(answer)

    # --- audio, inline or through the Files API -----------------------------------------------

    def _with_audio(self, audio: Path, prompt: str, config: types.GenerateContentConfig) -> str:
        self._caps.admit(audio)
        mime = audio_mime(audio)
        uploaded: types.File | None = None
        if audio.stat().st_size <= self.inline_max_bytes:
            part = types.Part.from_bytes(data=audio.read_bytes(), mime_type=mime)
        else:
            uploaded = self._upload(audio, mime)
            part = types.Part.from_uri(file_uri=str(uploaded.uri), mime_type=uploaded.mime_type or mime)
        try:
            answer = self._call(
                lambda: self._client.models.generate_content(
                    model=self.model, contents=[part, prompt], config=config
                )
            )
            return self._text(answer)
        finally:
            if uploaded is not None and uploaded.name:
                name = uploaded.name
                try:
                    self._call(lambda: self._client.files.delete(name=name))
                except (EngineUnavailable, EngineRejected) as exc:
                    logger.warning(
                        "%s: could not delete %s (it expires in 48 h): %s", self._server, name, exc
                    )

    def _upload(self, audio: Path, mime: str) -> types.File:
        uploaded = self._call(lambda: self._client.files.upload(file=audio, config={"mime_type": mime}))
        deadline = time.monotonic() + FILE_WAIT_S
        while uploaded.state == types.FileState.PROCESSING and time.monotonic() < deadline:
            time.sleep(1.0)
            name = str(uploaded.name)
            uploaded = self._call(lambda name=name: self._client.files.get(name=name))  # type: ignore[misc]
        if uploaded.state != types.FileState.ACTIVE:
            raise EngineRejected(f"{self._server} did not accept {audio.name}: file state {uploaded.state}")
        return uploaded

    def _text(self, answer: types.GenerateContentResponse) -> str:
        text = answer.text
        if text is None:
            reason = answer.candidates[0].finish_reason if answer.candidates else "no candidate"
            raise EngineRejected(f"{self._server} answered without text ({reason})")
        return text.strip()

    # --- errors and retries -------------------------------------------------------------------

    def _call(self, request: Callable[[], T]) -> T:
        last: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                return request()
            except errors.APIError as exc:
                error = as_error(self._server, exc.code, exc.message or str(exc))
                raw_headers = getattr(exc.response, "headers", None)
                hint = retry_delay_s(dict(raw_headers) if raw_headers else None, exc.details)
            except (httpx.HTTPError, httpx2.HTTPError, OSError) as exc:
                error = as_error(self._server, None, f"{type(exc).__name__}: {exc}")
                hint = None
            if isinstance(error, WindowTooLarge):
                self._caps.learn(error)
            if not isinstance(error, EngineUnavailable):
                raise error
            last = error
            if attempt < self._retries:
                delay = (
                    min(hint, MAX_RETRY_WAIT_S)
                    if hint is not None
                    else backoff_s(attempt, self._backoff_base_s)
                )
                logger.warning("%s: retrying in %.2f s after: %s", self._server, delay, error)
                time.sleep(delay)
        assert last is not None
        raise last
