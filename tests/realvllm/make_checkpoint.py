"""Build a tiny random-weight Voxtral checkpoint in Mistral format, for real vLLM to serve in tests.

Run with the tier's own interpreter (it needs torch, safetensors and mistral_common)::

    .venv-vllm/bin/python tests/realvllm/make_checkpoint.py .cache/realvllm/tiny-voxtral

It writes ``params.json`` (an audio section, ``multimodal.whisper_model_args``, makes vLLM pick
``VoxtralForConditionalGeneration``), ``consolidated.safetensors`` (random weights, fixed seed,
~70 MB), ``generation_config.json`` and ``tekken.json`` (mistral_common's bundled Tekken
vocabulary with Voxtral's special tokens and an ``audio`` section). The shapes are Voxtral's,
shrunk; the weight names are the Mistral ones that vLLM's voxtral.py
remaps. The same seed gives the same bytes, and an existing complete checkpoint is left alone
(``--force`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20261101
VERSION = 2  # bump when the checkpoint's shape or contents change: the stamp then no longer matches

TEXT = {"dim": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 64, "hidden_dim": 512}
VOCAB = 131_072
ENCODER = {"dim": 128, "n_layers": 2, "n_heads": 2, "head_dim": 64, "hidden_dim": 256}
MEL_BINS = 128
DOWNSAMPLE = 4
SAMPLE_RATE = 16_000
HOP = 160
WINDOW = 400

# Voxtral's special tokens by rank; the others are filled in as <SPECIAL_n> by mistral_common.
SPECIAL = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
}
NUM_SPECIAL = 1000


def params() -> dict[str, object]:
    return {
        **TEXT,
        "rope_theta": 1e8,
        "norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "max_seq_len": 32_768,
        "max_position_embeddings": 32_768,
        "tied_embeddings": True,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    **ENCODER,
                    "vocab_size": 51_866,
                    "max_source_positions": 1500,
                    "audio_encoding_args": {
                        "sampling_rate": SAMPLE_RATE,
                        "num_mel_bins": MEL_BINS,
                        "hop_length": HOP,
                        "window_size": WINDOW,
                    },
                },
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            }
        },
    }


def weights() -> dict[str, torch.Tensor]:
    """Mistral-named tensors: norms at one, everything else ``randn * 0.02`` from a fixed seed."""
    gen = torch.Generator().manual_seed(SEED)
    out: dict[str, torch.Tensor] = {}

    def rand(name: str, *shape: int) -> None:
        out[name] = (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    def ones(name: str, n: int) -> None:
        out[name] = torch.ones(n, dtype=torch.bfloat16)

    def zeros(name: str, n: int) -> None:
        out[name] = torch.zeros(n, dtype=torch.bfloat16)

    d, h = TEXT["dim"], TEXT["hidden_dim"]
    q, kv = TEXT["n_heads"] * TEXT["head_dim"], TEXT["n_kv_heads"] * TEXT["head_dim"]
    rand("tok_embeddings.weight", VOCAB, d)
    # Control tokens get zero embeddings, hence zero logits (the embeddings are tied): greedy decoding
    # then emits text, as a trained model does, instead of control tokens that decode to "".
    out["tok_embeddings.weight"][:NUM_SPECIAL] = 0
    for i in range(TEXT["n_layers"]):
        p = f"layers.{i}"
        rand(f"{p}.attention.wq.weight", q, d)
        rand(f"{p}.attention.wk.weight", kv, d)
        rand(f"{p}.attention.wv.weight", kv, d)
        rand(f"{p}.attention.wo.weight", d, q)
        rand(f"{p}.feed_forward.w1.weight", h, d)
        rand(f"{p}.feed_forward.w2.weight", d, h)
        rand(f"{p}.feed_forward.w3.weight", h, d)
        ones(f"{p}.attention_norm.weight", d)
        ones(f"{p}.ffn_norm.weight", d)
    ones("norm.weight", d)

    e, eh = ENCODER["dim"], ENCODER["hidden_dim"]
    eq = ENCODER["n_heads"] * ENCODER["head_dim"]
    w = "mm_whisper_embeddings.whisper_encoder"
    rand(f"{w}.conv_layers.0.conv.weight", e, MEL_BINS, 3)
    zeros(f"{w}.conv_layers.0.conv.bias", e)
    rand(f"{w}.conv_layers.1.conv.weight", e, e, 3)
    zeros(f"{w}.conv_layers.1.conv.bias", e)
    for i in range(ENCODER["n_layers"]):
        p = f"{w}.transformer.layers.{i}"
        rand(f"{p}.attention.wq.weight", eq, e)
        zeros(f"{p}.attention.wq.bias", eq)
        rand(f"{p}.attention.wk.weight", eq, e)  # Whisper's key projection has no bias
        rand(f"{p}.attention.wv.weight", eq, e)
        zeros(f"{p}.attention.wv.bias", eq)
        rand(f"{p}.attention.wo.weight", e, eq)
        zeros(f"{p}.attention.wo.bias", e)
        ones(f"{p}.attention_norm.weight", e)
        zeros(f"{p}.attention_norm.bias", e)
        rand(f"{p}.feed_forward.w1.weight", eh, e)
        zeros(f"{p}.feed_forward.w1.bias", eh)
        rand(f"{p}.feed_forward.w2.weight", e, eh)
        zeros(f"{p}.feed_forward.w2.bias", e)
        ones(f"{p}.ffn_norm.weight", e)
        zeros(f"{p}.ffn_norm.bias", e)
    ones(f"{w}.transformer.norm.weight", e)
    zeros(f"{w}.transformer.norm.bias", e)
    rand("mm_whisper_embeddings.audio_language_projection.0.weight", d, e * DOWNSAMPLE)
    rand("mm_whisper_embeddings.audio_language_projection.2.weight", d, d)
    return out


def tekken() -> dict[str, object]:
    """mistral_common's bundled Tekken vocabulary, as a v7 tokenizer with Voxtral's audio section."""
    import mistral_common

    bundled = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    data = json.loads(bundled.read_text(encoding="utf-8"))
    config = dict(data["config"])
    config.update(version="v7", default_vocab_size=VOCAB, default_num_special_tokens=NUM_SPECIAL)
    special = [
        {"rank": i, "token_str": SPECIAL.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(NUM_SPECIAL)
    ]
    return {
        "config": config,
        "vocab": data["vocab"],
        "special_tokens": special,
        "audio": {
            "sampling_rate": SAMPLE_RATE,
            "frame_rate": SAMPLE_RATE / HOP / 2 / DOWNSAMPLE,  # 12.5 tokens per second
            "audio_encoding_config": {"num_mel_bins": MEL_BINS, "hop_length": HOP, "window_size": WINDOW},
            "chunk_length_s": 30.0,
        },
    }


def build(out: Path, force: bool = False) -> Path:
    stamp = out / ".complete"
    if not force and stamp.is_file() and stamp.read_text().strip() == str(VERSION):
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "params.json").write_text(json.dumps(params(), indent=2) + "\n")
    (tmp / "tekken.json").write_text(json.dumps(tekken()))
    # Found first by vLLM's generation-config lookup, which otherwise retries an HF config.json
    # parse with sleeps (~20 s of start-up). vLLM's own sampling defaults stay in force.
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    save_file(weights(), str(tmp / "consolidated.safetensors"), metadata={"format": "pt"})
    (tmp / ".complete").write_text(f"{VERSION}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="folder to write the checkpoint to")
    parser.add_argument("--force", action="store_true", help="rebuild even if it is already there")
    args = parser.parse_args(argv)
    path = build(args.out, force=args.force)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
