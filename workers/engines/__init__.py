"""Engines: the audio language models the pipeline talks to, and ``build_engine`` to pick one.

Each engine module is imported only when chosen, so a CPU-only install never imports what it
does not use (the offline engine pulls in pocketsphinx).
"""

from __future__ import annotations

import logging

from jobs.engine import Engine
from jobs.errors import InputError
from jobs.settings import Settings

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """The engine ``settings.engine`` names; ``auto`` picks vllm (a URL is set), then the hosted
    engines whose key is set (mistral, gemini, openai, in that order), then offline."""
    choice = settings.engine
    if choice == "auto":
        if settings.vllm_url:
            choice = "vllm"
        elif settings.mistral_api_key:
            choice = "mistral"
        elif settings.gemini_api_key:
            choice = "gemini"
        elif settings.openai_api_key:
            choice = "openai"
        else:
            logger.warning(
                "no VOXBATCH_VLLM_URL and no hosted API key (VOXBATCH_MISTRAL_API_KEY, "
                "VOXBATCH_GEMINI_API_KEY, VOXBATCH_OPENAI_API_KEY): using the offline engine "
                "(pocketsphinx, English only, low accuracy, no summaries)"
            )
            choice = "offline"
    if choice == "vllm":
        if not settings.vllm_url:
            raise InputError(
                "VOXBATCH_ENGINE=vllm needs VOXBATCH_VLLM_URL (for example http://gpu-host:8000/v1)"
            )
        from workers.engines.vllm import VLLMEngine

        return VLLMEngine(settings)
    if choice == "mistral":
        if not settings.mistral_api_key:
            raise InputError("VOXBATCH_ENGINE=mistral needs VOXBATCH_MISTRAL_API_KEY")
        from workers.engines.mistral import MistralEngine

        return MistralEngine(settings)
    if choice == "gemini":
        if not settings.gemini_api_key:
            raise InputError("VOXBATCH_ENGINE=gemini needs VOXBATCH_GEMINI_API_KEY")
        from workers.engines.gemini import GeminiEngine

        return GeminiEngine(settings)
    if choice == "openai":
        if not settings.openai_api_key:
            raise InputError("VOXBATCH_ENGINE=openai needs VOXBATCH_OPENAI_API_KEY")
        from workers.engines.openai import OpenAIEngine

        return OpenAIEngine(settings)
    if choice == "offline":
        from workers.engines.offline import OfflineEngine

        engine: Engine = OfflineEngine(settings)
        return engine
    raise InputError(
        f"unknown engine {settings.engine!r}; use auto, vllm, mistral, gemini, openai or offline"
    )
