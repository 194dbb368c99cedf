"""MistralEngine: Voxtral on Mistral's hosted API (api.mistral.ai), the no-GPU fallback.

Same model family and the same OpenAI-like endpoints as vLLM, with different shapes and limits
(shared/reference/voxtral-vllm.md §5):

- ``input_audio`` is a plain base64 string, not ``{"data", "format"}``;
- transcription and chat use different model ids, both configurable (the ids churn);
- the transcription endpoint takes no token limit, response format or penalties, so a looping
  transcript is retried at a higher temperature only;
- audio is limited to about 15 min per transcription and 20 min per chat request, so
  ``max_audio_s()`` reports 15 min up front and windows are cut to fit before they are sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.errors import InputError
from jobs.settings import Settings
from workers.engines.http import ApiClient
from workers.engines.vllm import VLLMEngine

TRANSCRIBE_MAX_S = 15 * 60.0
CHAT_MAX_S = 20 * 60.0


class MistralEngine(VLLMEngine):
    """Mistral's hosted API at ``settings.mistral_url`` with ``settings.mistral_api_key``."""

    name = "mistral"
    transcribe_loop_retry: Mapping[str, Any] = {"temperature": 0.3}

    def __init__(self, settings: Settings, *, backoff_base_s: float = 1.0) -> None:
        if not settings.mistral_api_key:
            raise InputError("the mistral engine needs VOXBATCH_MISTRAL_API_KEY")
        # The vLLM-specific setup does not apply; the shared machinery needs these fields.
        self.model = settings.mistral_chat_model
        self.transcribe_model = settings.mistral_transcribe_model
        self._api = ApiClient(
            settings.mistral_url,
            server=f"Mistral API at {settings.mistral_url}",
            headers={"Authorization": f"Bearer {settings.mistral_api_key}"},
            timeout_s=settings.request_timeout_s,
            retries=settings.engine_retries,
            backoff_base_s=backoff_base_s,
        )
        self._init_limits(max_s=min(TRANSCRIBE_MAX_S, CHAT_MAX_S), max_upload_bytes=None)

    def _transcription_fields(self, language: str | None, max_tokens: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.transcribe_model, "temperature": 0.0}
        if language:
            fields["language"] = language
        return fields

    def _audio_part(self, data_b64: str, fmt: str) -> dict[str, Any]:
        return {"type": "input_audio", "input_audio": data_b64}
