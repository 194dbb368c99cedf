"""Build a tiny random-weight Qwen2-Audio checkpoint in Hugging Face format, for real vLLM to serve.

Run with the tier's own interpreter (it needs torch, safetensors, tokenizers and transformers)::

    .venv-vllm/bin/python tests/realvllm/make_qwen2_audio_checkpoint.py .cache/realvllm/tiny-qwen2-audio

It writes what vLLM's ``Qwen2AudioForConditionalGeneration`` (vllm/model_executor/models/
qwen2_audio.py) loads from a Qwen/Qwen2-Audio-7B-Instruct snapshot, at a fraction of the size:

- ``config.json``: a ``Qwen2AudioConfig`` with a 2-layer audio encoder and a 2-layer Qwen2 text model.
  The audio sizes vLLM depends on are the real ones: 128 mel bins and 1500 encoder positions, so a
  30-second item is 3000 mel frames (vLLM's input schema fixes that number) and 750 audio tokens;
- ``model.safetensors``: random weights (``randn * 0.02``, norms at one, biases at zero, fixed
  seed), named as in the real snapshot (``audio_tower.*``, ``multi_modal_projector.linear.*``,
  ``language_model.model.*``, ``language_model.lm_head.weight``), ~4 MB;
- ``tokenizer.json`` / ``tokenizer_config.json``: a byte-level BPE trained with ``tokenizers`` on a
  few sentences (the real Qwen2 vocabulary is not downloadable here), plus Qwen2-Audio's special
  tokens and its chat template (the one transformers' ``Qwen2AudioProcessor`` carries);
- ``preprocessor_config.json``: the real ``WhisperFeatureExtractor`` settings (16 kHz, hop 160,
  n_fft 400, 30-second chunks, 128 mel bins);
- ``generation_config.json``.

The same seed gives the same bytes, and an existing complete checkpoint is left alone (``--force``
rebuilds it; a new VERSION does too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20261129
VERSION = 1  # bump when the checkpoint's shape or contents change: the stamp then no longer matches

# The real model: Whisper-large-v3-sized encoder (d_model 1280, 32 layers) and Qwen-7B. Only the
# widths and depths shrink; everything that sets how audio becomes tokens stays as it is.
ENCODER = {
    "d_model": 128,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 256,
    "num_mel_bins": 128,
    "max_source_positions": 1500,  # 3000 mel frames / the stride-2 conv: a 30 s chunk
    "scale_embedding": False,
    "activation_function": "gelu",
}
TEXT = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,  # the profile serves --max-model-len 8192, the real model's length
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
SAMPLE_RATE = 16_000
HOP = 160
N_FFT = 400
CHUNK_S = 30
BPE_VOCAB = 512

# Qwen2-Audio's special tokens, in the real tokenizer's order (ids 151643-151648 there).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL = (ENDOFTEXT, IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS)

# transformers' Qwen2AudioProcessor.default_chat_template (models/qwen2_audio), kept there because
# the hub's tokenizer_config.json has the same template; a system turn is added when none is given.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' "
    "or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Enough text for a few hundred merges; answers are random anyway.
CORPUS = (
    "Transcribe the audio verbatim, word for word, in the language that is spoken.",
    "Write only the words that are said: no translation, no summary, no commentary, no timestamps.",
    "You are a helpful assistant. Summarize this talk in one sentence.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Researchers measured the temperature of the lake every morning for three months.",
    "Good evening, and welcome to the conference on distributed systems and storage.",
    "The quick brown fox jumps over the lazy dog while the band plays in the park.",
    "Merge these summaries into one paragraph, keeping the speakers and the numbers.",
    "Questions from the audience followed the talk, about latency, costs and failures.",
    "She said the results were surprising, and that the next experiment starts in June.",
)


def tokenizer_json() -> str:
    """A byte-level BPE, Qwen2's shape (byte-level pre-tokenizer and decoder), with the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL))
    return tok.to_str()


def token_ids(tokenizer: str) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer)
    ids = {name: tok.token_to_id(name) for name in SPECIAL}
    assert all(i is not None for i in ids.values()), ids
    ids["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    return ids


def config(ids: dict[str, int]) -> dict[str, object]:
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": "qwen2_audio",
        "audio_token_index": ids[AUDIO],
        "audio_config": {"model_type": "qwen2_audio_encoder", **ENCODER},
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": ids["vocab_size"],
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            **TEXT,
        },
        "torch_dtype": "bfloat16",
        "ignore_index": -100,
    }


def weights(ids: dict[str, int]) -> dict[str, torch.Tensor]:
    """Tensors named as in the real snapshot: norms at one, biases at zero, else ``randn * 0.02``."""
    gen = torch.Generator().manual_seed(SEED)
    out: dict[str, torch.Tensor] = {}

    def rand(name: str, *shape: int) -> None:
        out[name] = (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    def ones(name: str, n: int) -> None:
        out[name] = torch.ones(n, dtype=torch.bfloat16)

    def zeros(name: str, n: int) -> None:
        out[name] = torch.zeros(n, dtype=torch.bfloat16)

    def linear(name: str, n_out: int, n_in: int, bias: bool = True) -> None:
        rand(f"{name}.weight", n_out, n_in)
        if bias:
            zeros(f"{name}.bias", n_out)

    def layer_norm(name: str, n: int) -> None:
        ones(f"{name}.weight", n)
        zeros(f"{name}.bias", n)

    e, eh, mel = ENCODER["d_model"], ENCODER["encoder_ffn_dim"], ENCODER["num_mel_bins"]
    a = "audio_tower"
    rand(f"{a}.conv1.weight", e, mel, 3)
    zeros(f"{a}.conv1.bias", e)
    rand(f"{a}.conv2.weight", e, e, 3)
    zeros(f"{a}.conv2.bias", e)
    rand(f"{a}.embed_positions.weight", ENCODER["max_source_positions"], e)
    for i in range(ENCODER["encoder_layers"]):
        p = f"{a}.layers.{i}"
        linear(f"{p}.self_attn.q_proj", e, e)
        linear(f"{p}.self_attn.k_proj", e, e, bias=False)  # Whisper's key projection has no bias
        linear(f"{p}.self_attn.v_proj", e, e)
        linear(f"{p}.self_attn.out_proj", e, e)
        layer_norm(f"{p}.self_attn_layer_norm", e)
        linear(f"{p}.fc1", eh, e)
        linear(f"{p}.fc2", e, eh)
        layer_norm(f"{p}.final_layer_norm", e)
    layer_norm(f"{a}.layer_norm", e)

    d, h, vocab = TEXT["hidden_size"], TEXT["intermediate_size"], ids["vocab_size"]
    head_dim = d // TEXT["num_attention_heads"]
    q, kv = TEXT["num_attention_heads"] * head_dim, TEXT["num_key_value_heads"] * head_dim
    linear("multi_modal_projector.linear", d, e)
    m = "language_model.model"
    rand(f"{m}.embed_tokens.weight", vocab, d)
    for i in range(TEXT["num_hidden_layers"]):
        p = f"{m}.layers.{i}"
        linear(f"{p}.self_attn.q_proj", q, d)
        linear(f"{p}.self_attn.k_proj", kv, d)
        linear(f"{p}.self_attn.v_proj", kv, d)
        linear(f"{p}.self_attn.o_proj", d, q, bias=False)
        linear(f"{p}.mlp.gate_proj", h, d, bias=False)
        linear(f"{p}.mlp.up_proj", h, d, bias=False)
        linear(f"{p}.mlp.down_proj", d, h, bias=False)
        ones(f"{p}.input_layernorm.weight", d)
        ones(f"{p}.post_attention_layernorm.weight", d)
    ones(f"{m}.norm.weight", d)
    rand("language_model.lm_head.weight", vocab, d)
    # Special tokens get zero logits: greedy decoding then emits text, as a trained model does,
    # instead of <|im_end|> at once or <|AUDIO|> tokens that decode to "".
    for name in SPECIAL:
        out["language_model.lm_head.weight"][ids[name]] = 0
    return out


def tokenizer_config() -> dict[str, object]:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "processor_class": "Qwen2AudioProcessor",
        "model_max_length": TEXT["max_position_embeddings"],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "split_special_tokens": False,
        "extra_special_tokens": [IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS],
        "chat_template": CHAT_TEMPLATE,
    }


def preprocessor_config() -> dict[str, object]:
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "Qwen2AudioProcessor",
        "feature_size": ENCODER["num_mel_bins"],
        "sampling_rate": SAMPLE_RATE,
        "hop_length": HOP,
        "n_fft": N_FFT,
        "chunk_length": CHUNK_S,
        "n_samples": CHUNK_S * SAMPLE_RATE,
        "nb_max_frames": CHUNK_S * SAMPLE_RATE // HOP,  # 3000
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "dither": 0.0,
    }


def build(out: Path, force: bool = False) -> Path:
    stamp = out / ".complete"
    if not force and stamp.is_file() and stamp.read_text().strip() == str(VERSION):
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = tokenizer_json()
    ids = token_ids(tokenizer)

    def write(name: str, data: object) -> None:
        (tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    (tmp / "tokenizer.json").write_text(tokenizer)
    write("tokenizer_config.json", tokenizer_config())
    write("preprocessor_config.json", preprocessor_config())
    write("config.json", config(ids))
    # eos: <|im_end|> ends an assistant turn, <|endoftext|> a document (as in the real file).
    write(
        "generation_config.json",
        {
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]],
            "pad_token_id": ids[ENDOFTEXT],
        },
    )
    save_file(weights(ids), str(tmp / "model.safetensors"), metadata={"format": "pt"})
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
