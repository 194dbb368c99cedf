"""`voxbatch vllm --print` (run as the installed command) carries what Voxtral on vLLM needs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deployfiles import parse_printed, run_cli
from workers.vllm_launch import VllmOptions, build_vllm_launch, flag_values

THIRTY_MIN_S = 1800


def printed(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    result = run_cli("vllm", "--print", *args, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    launch = parse_printed(lines[0])
    return launch.env, launch.argv


def test_print_carries_every_flag_and_variable_voxtral_needs() -> None:
    env, argv = printed()
    assert argv[:3] == ["vllm", "serve", "mistralai/Voxtral-Small-24B-2507"]
    flags = flag_values(argv)
    assert flags["--tokenizer-mode"] == "mistral"
    assert flags["--config-format"] == "mistral"
    assert flags["--load-format"] == "mistral"
    assert flags["--max-model-len"] == "32768"
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"audio": 1}
    assert 0 < float(flags["--gpu-memory-utilization"]) <= 1
    assert flags["--port"] == "8000"
    assert int(env["VLLM_MAX_AUDIO_DECODE_DURATION_S"]) == 2400
    assert int(env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"]) >= 100
    # 16 kHz mono float32 for the whole allowed duration.
    assert int(env["VLLM_MAX_AUDIO_DECODE_BYTES"]) >= 2400 * 16_000 * 4


def test_model_comes_from_the_setting_and_the_option_wins() -> None:
    _env, argv = printed(env={"VOXBATCH_MODEL": "mistralai/Voxtral-Mini-3B-2507"})
    assert argv[2] == "mistralai/Voxtral-Mini-3B-2507"
    _env, argv = printed("--model", "org/other", env={"VOXBATCH_MODEL": "mistralai/Voxtral-Mini-3B-2507"})
    assert argv[2] == "org/other"


def test_parallelism_port_and_extra_arguments_pass_through() -> None:
    _env, argv = printed(
        "--tensor-parallel-size",
        "2",
        "--data-parallel-size",
        "4",
        "--port",
        "8010",
        "--max-num-seqs",
        "6",
        "--",
        "--enable-prefix-caching",
    )
    flags = flag_values(argv)
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--data-parallel-size"] == "4"
    assert flags["--port"] == "8010"
    assert flags["--max-num-seqs"] == "6"
    assert argv[-1] == "--enable-prefix-caching"
    # The defaults stay out of the command line (vLLM's own defaults apply).
    _env, plain = printed()
    assert "--tensor-parallel-size" not in plain and "--data-parallel-size" not in plain
    # The batch holds what each worker keeps in flight (VOXBATCH_MAX_INFLIGHT, default 256).
    assert flag_values(plain)["--max-num-seqs"] == "256"
    _env, argv = printed(env={"VOXBATCH_MAX_INFLIGHT": "128"})
    assert flag_values(argv)["--max-num-seqs"] == "128"


def test_api_key_goes_to_the_environment_and_is_not_printed() -> None:
    env, argv = printed(env={"VOXBATCH_VLLM_API_KEY": "s3cret-key"})
    assert env["VLLM_API_KEY"] == "***"
    assert not any("s3cret-key" in a for a in argv)
    launch = build_vllm_launch(VllmOptions(api_key="s3cret-key"))
    assert launch.env["VLLM_API_KEY"] == "s3cret-key"
    assert "s3cret-key" not in launch.shell_line()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (VllmOptions(max_audio_s=600), "1800"),
        (VllmOptions(gpu_memory_utilization=1.5), "gpu-memory-utilization"),
        (VllmOptions(tensor_parallel_size=0), "at least 1"),
        (VllmOptions(port=70000), "port"),
    ],
)
def test_bad_values_are_refused(options: VllmOptions, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build_vllm_launch(options)


def test_a_bad_value_is_one_line_on_the_command_line() -> None:
    result = run_cli("vllm", "--print", "--max-audio-seconds", "600")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "1800" in result.stderr
    assert result.stdout == ""


def test_without_vllm_it_says_how_to_install_it(tmp_path: Path) -> None:
    # The command looks for vLLM's executable on PATH: a PATH without one, whatever this machine has.
    result = run_cli("vllm", env={"PATH": str(tmp_path)})
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "voxbatch: vLLM is not installed here; on the GPU machine run: pip install 'voxbatch[gpu]'"
    )


def test_a_30_minute_16khz_mono_flac_fits_under_the_size_cap(tmp_path: Path) -> None:
    """Measured, not assumed: white noise is the least compressible content a window can hold."""
    env, _argv = printed()
    flac = tmp_path / "window.flac"
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi",
            "-i", f"anoisesrc=d={THIRTY_MIN_S}:c=white:r=16000:a=0.5",
            "-ac", "1", "-ar", "16000", "-sample_fmt", "s16", str(flac),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    size_mb = flac.stat().st_size / 1e6
    cap_mb = int(env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"])
    print(f"30-min 16 kHz mono FLAC of white noise: {size_mb:.1f} MB; cap {cap_mb} MB")
    assert size_mb < cap_mb
    assert int(env["VLLM_MAX_AUDIO_DECODE_DURATION_S"]) >= THIRTY_MIN_S
