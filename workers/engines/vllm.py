"""VLLMEngine: Voxtral served by vLLM, through its OpenAI-compatible HTTP API.

What vLLM does with Voxtral (docs/models.md) shapes every request:

- the whole upload is one prompt: 375 tokens per started 30 s of audio, in a 32,768-token
  context, so the answer's ``max_completion_tokens`` is always bounded by what is left;
- transcription wants ``temperature=0``; audio understanding ``temperature=0.2, top_p=0.95``;
- there are no system prompts: instructions go in the user turn, next to the audio;
- servers cap uploads (``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB``, 25 MB) and durations
  (``VLLM_MAX_AUDIO_DECODE_DURATION_S``, 600 s). A refusal raises WindowTooLarge; the cap it names
  is remembered, so ``max_audio_s()`` reports it and later windows are refused before upload;
- Voxtral can loop on music or silence: a looping answer is asked again once with a penalty,
  then raised as RepetitionLoop so the pipeline splits the window.

Other models are driven by their profile (jobs/profiles.py, ``VOXBATCH_MODEL``/``_PROFILE``): its
audio tokens per second and context size every request; a model without vLLM's transcription
endpoint transcribes through a chat request carrying the segment and the profile's verbatim prompt;
a window longer than the model's longest item goes as several items of one chat request; a system
message is sent only where the model allows one beside audio.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jobs.engine import Capabilities
from jobs.errors import EngineRejected, InputError, RepetitionLoop, TranscriptCut, WindowTooLarge
from jobs.profiles import DEFAULT_PROFILE, TRANSCRIPT_TOKENS_PER_S, ModelProfile, profile_for
from jobs.settings import Settings
from workers.engines import durations
from workers.engines.answers import Refusal, RefusedTooLarge
from workers.engines.audio_parts import audio_format, audio_mime, cut_items
from workers.engines.caps import MIB, Caps, fitting_duration
from workers.engines.http import ApiClient
from workers.engines.loops import is_loop

logger = logging.getLogger(__name__)

MAX_MODEL_LEN = 32_768
PROMPT_OVERHEAD_TOKENS = 16  # [INST], audio delimiters, "lang:xx[TRANSCRIBE]": a few, counted high
MIN_OUTPUT_TOKENS = 512  # a window leaving less room than this for the answer is too long
CUT_FRACTION = 0.9  # of the token cap: a transcript this long (by the high estimate) was cut
SUMMARY_MAX_TOKENS = 2048
COMPLETE_MAX_TOKENS = 4096
DEFAULT_UPLOAD_CAP_BYTES = 25 * 1024 * 1024  # vLLM's VLLM_MAX_AUDIO_CLIP_FILESIZE_MB default


def text_tokens(text: str) -> int:
    """A high estimate of Tekken tokens (about 4 bytes per token in English, fewer elsewhere)."""
    return math.ceil(len(text.encode("utf-8")) / 3)


class VLLMEngine:
    """Voxtral on a vLLM server at ``settings.vllm_url`` (``http://host:8000/v1``)."""

    name = "vllm"
    capabilities = Capabilities(profile=DEFAULT_PROFILE)
    profile: ModelProfile = DEFAULT_PROFILE  # Voxtral Small's, unless the settings name another
    # Sampling changes for the one retry after a looping answer.
    transcribe_loop_retry: Mapping[str, Any] = {"temperature": 0.2, "frequency_penalty": 0.5}
    chat_loop_retry: Mapping[str, Any] = {"temperature": 0.3, "frequency_penalty": 0.5}

    def __init__(self, settings: Settings, *, backoff_base_s: float = 1.0) -> None:
        if not settings.vllm_url:
            raise InputError("the vllm engine needs VOXBATCH_VLLM_URL (for example http://gpu-host:8000/v1)")
        headers = {"Authorization": f"Bearer {settings.vllm_api_key}"} if settings.vllm_api_key else {}
        self.profile = profile_for(settings.model, settings.model_profile)
        self.capabilities = Capabilities(profile=self.profile)
        self.model = settings.model
        self.transcribe_model = settings.model
        self._settings = settings
        self._api = ApiClient(
            settings.vllm_url,
            server=f"vLLM at {settings.vllm_url}",
            headers=headers,
            timeout_s=settings.request_timeout_s,
            retries=settings.engine_retries,
            backoff_base_s=backoff_base_s,
            max_inflight=settings.max_inflight,
            max_audio_beside_clips_s=settings.max_audio_beside_clips_s,
            audio_beside_clips_ratio=settings.audio_beside_clips_ratio,
            overtaken_factor=settings.request_overtaken_factor or None,
        )
        self._init_limits(
            max_s=settings.vllm_max_audio_s,
            max_upload_bytes=(settings.vllm_max_upload_mb * MIB if settings.vllm_max_upload_mb else None),
        )

    def _init_limits(self, max_s: float | None, max_upload_bytes: float | None) -> None:
        self._lock = threading.Lock()
        self._caps = Caps(
            self.name, max_s, max_upload_bytes, bytes_hint="VLLM_MAX_AUDIO_CLIP_FILESIZE_MB raises it"
        )
        # Lowered when a server started with a smaller one says so.
        self._context = min(MAX_MODEL_LEN, self.profile.context_tokens)

    # --- the Engine protocol ---------------------------------------------------------------

    def max_audio_s(self) -> float | None:
        learned = self._caps.max_audio_s()
        heard = self._chat_audio_cap()
        if heard is None:
            return learned
        return heard if learned is None else min(learned, heard)

    def _chat_audio_cap(self) -> float | None:
        """What one chat request can carry for this model (None: only the context limits it)."""
        if self.profile.max_item_s is None:
            return None
        return self.profile.chat_audio_s()

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        # vLLM's transcription endpoint takes no prompt: the vocabulary reaches summaries only.
        if not self.profile.transcription_endpoint:
            return self._transcribe_by_chat(audio, language)
        duration, size = self._admit(audio, prompt_tokens=0)
        room = self._context - self._audio_tokens(duration) - PROMPT_OVERHEAD_TOKENS
        max_tokens = min(room, max(MIN_OUTPUT_TOKENS, math.ceil(duration * TRANSCRIPT_TOKENS_PER_S)))
        fields = self._transcription_fields(language, max_tokens)

        def send(retry: Mapping[str, Any]) -> str:
            merged = {k: str(v) for k, v in {**fields, **retry}.items()}
            answer = self._post(
                "audio/transcriptions",
                duration,
                size,
                max_tokens,
                data=merged,
                files=lambda: {"file": (audio.name, audio.open("rb"), audio_mime(audio))},
            )
            if isinstance(answer, dict) and isinstance(answer.get("text"), str):
                answer = answer["text"]
            if not isinstance(answer, str):
                raise EngineRejected(f"{self.name} answered a transcription without text")
            text = answer.strip()
            # The JSON answer has no finish_reason: a transcript as long as its cap was cut there.
            # text_tokens over-counts, so a normal transcript never comes near the cap. A loop is
            # long too, but it is the loop guard's to retry.
            if text_tokens(text) >= CUT_FRACTION * max_tokens and not is_loop(text):
                raise TranscriptCut(f"the transcript reached its cap of {max_tokens} tokens", text)
            return text

        return self._without_loops(send, self.transcribe_loop_retry, f"transcript of {audio.name}")

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        item_s = self.profile.max_item_s
        if item_s is not None and durations.duration_s(audio) > item_s + 0.5:
            return self._summarize_items(audio, prompt, item_s)
        prompt_tokens = text_tokens(prompt)
        duration, size = self._admit(audio, prompt_tokens=prompt_tokens)
        room = self._context - self._audio_tokens(duration) - prompt_tokens - PROMPT_OVERHEAD_TOKENS
        data = base64.b64encode(audio.read_bytes()).decode("ascii")
        # Instructions ride in the user turn: Voxtral has no system prompt.
        content = [self._audio_part(data, audio_format(audio)), {"type": "text", "text": prompt}]
        return self._chat(content, min(room, SUMMARY_MAX_TOKENS), duration, size, f"summary of {audio.name}")

    def _summarize_items(self, audio: Path, prompt: str, item_s: float) -> str:
        """A window longer than the model's longest item: equal consecutive items, one request."""
        cap = self.max_audio_s()
        duration = durations.duration_s(audio)
        if cap is not None and duration > cap + 0.5:
            raise WindowTooLarge(
                f"the window lasts {duration:.0f} s, over the {cap:.0f} s {self.model} hears in one request",
                max_duration_s=cap,
            )
        items = cut_items(audio, math.ceil(duration / item_s))
        prompt_tokens = text_tokens(prompt)
        tokens = sum(self._audio_tokens(seconds) for _, seconds in items)
        room = self._context - tokens - prompt_tokens - PROMPT_OVERHEAD_TOKENS * (len(items) + 1)
        if room < MIN_OUTPUT_TOKENS:
            raise WindowTooLarge(
                f"the window lasts {duration:.0f} s: its audio leaves no room for an answer in the "
                f"{self._context}-token context",
                max_duration_s=self._longest_audio_s(self._context - prompt_tokens - MIN_OUTPUT_TOKENS),
            )
        content: list[dict[str, Any]] = [
            self._audio_part(base64.b64encode(wav).decode("ascii"), "wav") for wav, _ in items
        ]
        content.append(
            {"type": "text", "text": f"The {len(items)} audio clips above are consecutive parts.\n\n{prompt}"}
        )
        size = sum(len(pcm) for pcm in items)
        return self._chat(content, min(room, SUMMARY_MAX_TOKENS), duration, size, f"summary of {audio.name}")

    def _transcribe_by_chat(self, audio: Path, language: str | None) -> str:
        """Models without vLLM's transcription endpoint: the segment and a verbatim prompt in a chat."""
        prompt = self.profile.transcribe_prompt
        if language:
            prompt += f" The speech is in the language with ISO code '{language}'."
        prompt_tokens = text_tokens(prompt)
        duration, size = self._admit(audio, prompt_tokens=prompt_tokens)
        room = self._context - self._audio_tokens(duration) - prompt_tokens - PROMPT_OVERHEAD_TOKENS
        max_tokens = min(room, max(MIN_OUTPUT_TOKENS, math.ceil(duration * TRANSCRIPT_TOKENS_PER_S)))
        data = base64.b64encode(audio.read_bytes()).decode("ascii")
        content = [self._audio_part(data, audio_format(audio)), {"type": "text", "text": prompt}]
        text = self._chat(
            content,
            max_tokens,
            duration,
            size,
            f"transcript of {audio.name}",
            sampling={"temperature": 0.0},
            loop_retry=self.transcribe_loop_retry,
        )
        if text_tokens(text) >= CUT_FRACTION * max_tokens and not is_loop(text):
            raise TranscriptCut(f"the transcript reached its cap of {max_tokens} tokens", text)
        return text

    def complete(self, prompt: str) -> str:
        room = self._context - text_tokens(prompt) - PROMPT_OVERHEAD_TOKENS
        if room < MIN_OUTPUT_TOKENS:
            raise EngineRejected(
                f"the text prompt (about {text_tokens(prompt)} tokens) does not fit "
                f"{self.model}'s {self._context}-token context"
            )
        content = [{"type": "text", "text": prompt}]
        return self._chat(content, min(room, COMPLETE_MAX_TOKENS), 0.0, 0, "text answer")

    # --- shapes that differ between vLLM and Mistral's hosted API -------------------------------

    def _transcription_fields(self, language: str | None, max_tokens: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": self.transcribe_model,
            "temperature": 0.0,
            "response_format": "json",
            # Bounds a runaway loop: vLLM's default is the whole remaining context.
            "max_completion_tokens": max_tokens,
        }
        if language:
            fields["language"] = language
        return fields

    def _audio_part(self, data_b64: str, fmt: str) -> dict[str, Any]:
        return {"type": "input_audio", "input_audio": {"data": data_b64, "format": fmt}}

    # --- shared machinery --------------------------------------------------------------------

    def _audio_tokens(self, duration_s: float) -> int:
        return self.profile.audio_tokens(duration_s)

    def _longest_audio_s(self, token_budget: int) -> float:
        """The longest single item whose tokens fit in ``token_budget``."""
        pad = self.profile.pad_item_to_s
        if pad:
            per_pad = self.profile.audio_tokens(pad)
            return max(0, token_budget // per_pad) * pad
        return float(max(0, math.floor(token_budget / self.profile.audio_tokens_per_s)))

    def _messages(self, content: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The user turn, after the profile's system message where the model takes one beside audio."""
        messages: list[dict[str, Any]] = []
        system = self.profile.system_prompt
        if system and self.profile.system_with_audio:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        return messages

    def _chat(
        self,
        content: list[dict[str, Any]],
        max_tokens: int,
        duration: float,
        size: int,
        what: str,
        *,
        sampling: Mapping[str, Any] | None = None,
        loop_retry: Mapping[str, Any] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(content),
            "temperature": 0.2,
            "top_p": 0.95,
            "max_tokens": max_tokens,
            **(sampling or {}),
        }

        def send(retry: Mapping[str, Any]) -> str:
            answer = self._post("chat/completions", duration, size, max_tokens, json_body={**body, **retry})
            try:
                choice = answer["choices"][0]
                text = choice["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise EngineRejected(f"{self.name} answered the {what} without a message") from exc
            if not isinstance(text, str):
                raise EngineRejected(f"{self.name} answered the {what} without text")
            if choice.get("finish_reason") == "length":
                logger.warning("%s: the %s was cut at %d tokens", self.name, what, max_tokens)
            return text.strip()

        return self._without_loops(send, self.chat_loop_retry if loop_retry is None else loop_retry, what)

    def _without_loops(
        self, send: Callable[[Mapping[str, Any]], str], retry: Mapping[str, Any], what: str
    ) -> str:
        text = send({})
        if not is_loop(text):
            return text
        logger.warning("%s: the %s loops; asking again with %s", self.name, what, dict(retry))
        text = send(retry)
        if is_loop(text):
            raise RepetitionLoop(
                f"the {what} kept repeating itself even with a repetition penalty; the window will be split"
            )
        return text

    def _post(
        self,
        path: str,
        duration: float,
        size: int,
        max_tokens: int,
        **kwargs: Any,
    ) -> Any:
        """One request; its attempts' deadline grows with its audio and its longest answer, and the
        tenant is charged its audio seconds (a text-only prompt counts as one second)."""
        deadline = self._settings.request_deadline_s(duration, max_tokens)
        try:
            return self._api.post(path, deadline_s=deadline, cost_s=max(duration, 1.0), **kwargs)
        except RefusedTooLarge as exc:
            exc.max_duration_s = self._learn(exc.refusal, duration, size)
            raise

    def _admit(self, audio: Path, prompt_tokens: int) -> tuple[float, int]:
        """Refuse before uploading what the server is known to refuse; return (seconds, bytes)."""
        duration, size = self._caps.admit(audio, max_s=self._chat_audio_cap())
        budget = self._context - PROMPT_OVERHEAD_TOKENS - prompt_tokens - MIN_OUTPUT_TOKENS
        if self._audio_tokens(duration) > budget:
            raise WindowTooLarge(
                f"the window lasts {duration:.0f} s: its {self._audio_tokens(duration)} audio tokens "
                f"leave no room for an answer in the {self._context}-token context",
                max_duration_s=self._longest_audio_s(budget),
            )
        return duration, size

    def _learn(self, refusal: Refusal, duration: float, size: int) -> float | None:
        """Remember the limit a refusal reveals; return it as a duration when there is one."""
        limit: float | None = None
        if refusal.max_duration_s is not None:
            limit = refusal.max_duration_s
        elif refusal.max_model_len is not None:
            with self._lock:
                self._context = min(self._context, refusal.max_model_len)
            budget = refusal.max_model_len - PROMPT_OVERHEAD_TOKENS - MIN_OUTPUT_TOKENS
            limit = self._longest_audio_s(budget)
        elif refusal.about_size and size:
            known = self._caps.max_bytes()
            # vLLM names no number: assume its default when the file was above it.
            if known is None or known >= size:
                known = DEFAULT_UPLOAD_CAP_BYTES if size > DEFAULT_UPLOAD_CAP_BYTES else size / 2
            self._caps.lower_bytes(known)
            limit = fitting_duration(duration, size, known)
        if limit is not None:
            self._caps.lower_s(limit)
            logger.warning("%s: learned a limit of %.0f s per request: %s", self.name, limit, refusal.message)
        return limit
