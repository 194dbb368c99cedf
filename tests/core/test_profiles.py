"""Model profiles: which model gets which profile, and the sizes the planner takes from it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from jobs.profiles import (
    KIMI_AUDIO,
    PROFILES,
    QWEN2_AUDIO,
    SUMMARY_RESERVE_TOKENS,
    VOXTRAL_MINI,
    VOXTRAL_SMALL,
    ModelProfile,
    UnknownProfile,
    profile_for,
)
from jobs.settings import Settings
from workers.vllm_launch import VllmOptions, build_vllm_launch, flag_values


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_each_repo_selects_its_profile_and_the_explicit_name_wins(profile: ModelProfile) -> None:
    for repo in profile.repos:
        assert profile_for(repo) is profile
        assert profile_for(f"/models/{repo.split('/')[1]}") is profile  # a local snapshot
    assert profile_for("speech", profile.name) is profile


def test_an_unknown_model_is_voxtral_small_and_an_unknown_profile_is_refused() -> None:
    assert profile_for("org/other") is VOXTRAL_SMALL
    assert profile_for("mistralai/Voxtral-Mini-3B-2507") is VOXTRAL_MINI
    with pytest.raises(UnknownProfile, match="unknown model profile 'nope'; use one of voxtral-small"):
        profile_for("mistralai/Voxtral-Mini-3B-2507", "nope")
    with pytest.raises(ValidationError, match="unknown model profile"):
        Settings(model_profile="nope")
    assert Settings(model_profile="Kimi-Audio").model_profile == "Kimi-Audio"


def test_voxtral_keeps_30_minute_windows_heard_whole_and_30_second_segments() -> None:
    for p in (VOXTRAL_SMALL, VOXTRAL_MINI):
        assert p.max_window_s() == 1800 and p.segment_s() == 30 and p.summary_source() == "audio"
        assert p.audio_tokens(1) == 375 and p.audio_tokens(1800) == 22_500 and p.audio_tokens(1801) == 22_875


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_windows_fit_what_one_summary_request_can_carry(profile: ModelProfile) -> None:
    window = profile.max_window_s()
    assert 60 <= window <= 1800
    assert profile.segment_s() <= 30
    if profile.max_item_s is not None:
        assert profile.segment_s() <= profile.max_item_s
    if profile.summary_source() == "audio":
        items = 1 if profile.max_item_s is None else -(-window // profile.max_item_s)
        assert items <= profile.items_per_prompt
        per_item = window / items
        assert items * profile.audio_tokens(per_item) + SUMMARY_RESERVE_TOKENS <= profile.context_tokens
    else:
        assert profile.items_per_prompt * (profile.max_item_s or 0) < 120


def test_small_contexts_and_single_items_shape_the_plan() -> None:
    # Qwen2-Audio: 30-s items at 25 tokens/s in 8,192 tokens: windows of under 3 minutes, heard whole.
    assert QWEN2_AUDIO.summary_source() == "audio" and QWEN2_AUDIO.max_window_s() < 180
    # Kimi-Audio takes one 30-s audio per prompt: summaries read the transcripts instead.
    assert KIMI_AUDIO.summary_source() == "transcripts" and KIMI_AUDIO.chat_audio_s() == 30


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_the_launcher_serves_each_profile_with_its_flags(profile: ModelProfile) -> None:
    launch = build_vllm_launch(VllmOptions(model=profile.repos[0]))
    flags = flag_values(launch.argv)
    assert launch.argv[:3] == ("vllm", "serve", profile.repos[0])
    assert flags["--max-model-len"] == str(profile.context_tokens)
    assert json.loads(flags["--limit-mm-per-prompt"]) == profile.mm_limits()
    assert profile.items_per_prompt <= (profile.vllm_item_limit or 999)
    for arg in profile.serve_args:
        assert arg in launch.argv
    assert ("--trust-remote-code" in launch.argv) == ("--trust-remote-code" in profile.serve_args)
    assert ("--tokenizer-mode" in flags) == profile.name.startswith("voxtral")


def test_voxtral_flags_are_unchanged_and_phi4_serves_its_speech_lora() -> None:
    flags = flag_values(build_vllm_launch(VllmOptions()).argv)
    assert flags["--tokenizer-mode"] == flags["--config-format"] == flags["--load-format"] == "mistral"
    assert flags["--limit-mm-per-prompt"] == '{"audio": 1}' and flags["--max-model-len"] == "32768"
    phi = flag_values(build_vllm_launch(VllmOptions(model="/models/Phi-4-multimodal-instruct/")).argv)
    assert phi["--lora-modules"] == "speech=/models/Phi-4-multimodal-instruct/speech-lora"
    assert phi["--max-lora-rank"] == "320"
    qwen = build_vllm_launch(VllmOptions(model="org/any", profile="qwen3-omni")).argv
    assert json.loads(flag_values(qwen)["--limit-mm-per-prompt"]) == {"audio": 6, "image": 0, "video": 0}
