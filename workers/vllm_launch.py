"""The ``vllm serve`` command line and environment that let Voxtral take 30-minute windows.

One pure function builds both, so ``voxbatch vllm``, the gpu-worker image, the compose file and the
Kubernetes manifests cannot drift apart: all of them run ``voxbatch vllm`` (see docs/operations.md).

Why each piece is there (docs/operations.md, "vLLM for Voxtral"):
- ``--tokenizer-mode/--config-format/--load-format mistral``: Voxtral refuses to load without them.
- ``--max-model-len 32768``: the trained context; vLLM would otherwise take 128k from params.json and
  reserve KV cache for sequences the model cannot use.
- ``--limit-mm-per-prompt '{"audio": 1}'``: one window per request; also shrinks the start-up profiling
  run, whose dummy audio is max_model_len tokens long per item.
- ``VLLM_MAX_AUDIO_DECODE_DURATION_S``: recent vLLM refuses audio over 600 s by default.
- ``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB``: the 25 MB default is below a 30-minute 16 kHz mono FLAC (~30 MB).
- ``VLLM_MAX_AUDIO_DECODE_BYTES``: float32 PCM after decoding at the file's own rate; sized here for
  16 kHz mono (what the splitter sends), never below vLLM's own default.

Other models (jobs/profiles.py, chosen from the model name or ``--profile``) get their own flags:
their format and trust-remote-code flags, their ``--max-model-len``, and ``--limit-mm-per-prompt``
set to the audio items voxbatch sends in one request (image and video off for the Omni thinkers).
Voxtral's command line is unchanged.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jobs.profiles import ModelProfile, profile_for

VOXTRAL_CONTEXT_TOKENS = 32768
# 40 min: Voxtral's "understanding" ceiling (30,000 audio tokens); 30-min windows plus any re-cut margin.
DEFAULT_MAX_AUDIO_S = 2400.0
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_PORT = 8000
WINDOW_SAMPLE_RATE = 16_000
# A 16 kHz mono s16 WAV of DEFAULT_MAX_AUDIO_S is 76.8 MB; FLAC is about half of that.
MIN_CLIP_FILESIZE_MB = 100
VLLM_DEFAULT_DECODE_BYTES = 256 * 1024 * 1024
MIB = 1024 * 1024

# Names tests and docs check for; the values come from build_vllm_launch.
REQUIRED_FLAGS = (
    "--tokenizer-mode",
    "--config-format",
    "--load-format",
    "--max-model-len",
    "--limit-mm-per-prompt",
    "--gpu-memory-utilization",
)
REQUIRED_ENV = (
    "VLLM_MAX_AUDIO_DECODE_DURATION_S",
    "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB",
    "VLLM_MAX_AUDIO_DECODE_BYTES",
)
SECRET_ENV = ("VLLM_API_KEY", "HF_TOKEN")


@dataclass(frozen=True)
class VllmOptions:
    """What an operator may choose; everything Voxtral needs is not optional and not here."""

    model: str = "mistralai/Voxtral-Small-24B-2507"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_audio_s: float = DEFAULT_MAX_AUDIO_S
    max_num_seqs: int | None = None
    api_key: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    profile: str | None = None  # VOXBATCH_MODEL_PROFILE; unset: matched from the model name

    def model_profile(self) -> ModelProfile:
        return profile_for(self.model, self.profile)

    def check(self) -> None:
        """Raise ValueError with one sentence for a value vLLM would reject later, after a long load."""
        if not self.model.strip():
            raise ValueError("the model name is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ValueError("tensor and data parallel sizes must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("--gpu-memory-utilization must be in (0, 1]")
        if self.max_audio_s < 1800:
            raise ValueError("the audio duration cap must be at least 1800 s to take a 30-minute window")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError("--max-num-seqs must be at least 1")


@dataclass(frozen=True)
class VllmLaunch:
    argv: tuple[str, ...]
    env: Mapping[str, str]

    def shell_line(self, *, redact: bool = True) -> str:
        """``VAR=value ... vllm serve ...``, quoted for a POSIX shell; secrets shown as ***."""
        parts = [
            f"{name}={shlex.quote('***' if redact and name in SECRET_ENV else value)}"
            for name, value in sorted(self.env.items())
        ]
        parts.extend(shlex.quote(arg) for arg in self.argv)
        return " ".join(parts)


def clip_filesize_mb(max_audio_s: float) -> int:
    """Room for an uncompressed 16 kHz mono s16 WAV of the longest allowed window, with 20 % slack."""
    wav_mb = max_audio_s * WINDOW_SAMPLE_RATE * 2 / 1e6
    return max(MIN_CLIP_FILESIZE_MB, math.ceil(wav_mb * 1.2))


def decode_bytes(max_audio_s: float) -> int:
    """float32 PCM of the longest window at 16 kHz mono, doubled for files sent at 32 kHz or stereo."""
    needed = max_audio_s * WINDOW_SAMPLE_RATE * 4 * 2
    return max(VLLM_DEFAULT_DECODE_BYTES, math.ceil(needed / MIB) * MIB)


def build_vllm_launch(options: VllmOptions, base_env: Mapping[str, str] | None = None) -> VllmLaunch:
    """The ``vllm serve`` argv and the environment to run it with (base_env plus the audio caps)."""
    options.check()
    profile = options.model_profile()
    argv: list[str] = [
        "vllm",
        "serve",
        options.model,
        "--host",
        options.host,
        "--port",
        str(options.port),
        *profile.serve_args,
        "--max-model-len",
        str(profile.context_tokens),
        "--limit-mm-per-prompt",
        json.dumps(profile.mm_limits()),
        "--gpu-memory-utilization",
        f"{options.gpu_memory_utilization:g}",
    ]
    if profile.lora_module:
        # A LoRA served beside the base model (Phi-4's speech adapter): NAME=<model dir>/<subfolder>.
        name, _, subfolder = profile.lora_module.partition("=")
        argv += ["--lora-modules", f"{name}={options.model.rstrip('/')}/{subfolder}"]
    if options.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(options.data_parallel_size)]
    if options.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(options.max_num_seqs)]
    argv += list(options.extra_args)

    env: dict[str, str] = dict(base_env or {})
    env["VLLM_MAX_AUDIO_DECODE_DURATION_S"] = f"{math.ceil(options.max_audio_s)}"
    env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"] = str(clip_filesize_mb(options.max_audio_s))
    env["VLLM_MAX_AUDIO_DECODE_BYTES"] = str(decode_bytes(options.max_audio_s))
    if options.api_key:
        # vLLM reads the key from its environment, which keeps it out of `ps` output.
        env["VLLM_API_KEY"] = options.api_key
    return VllmLaunch(argv=tuple(argv), env=env)


def flag_values(argv: Sequence[str]) -> dict[str, str]:
    """``--flag value`` pairs of an argv (flags without a value map to ""); for checks and tests."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, _, value = arg.partition("=")
                values[name] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values[arg] = argv[i + 1]
                i += 1
            else:
                values[arg] = ""
        i += 1
    return values
