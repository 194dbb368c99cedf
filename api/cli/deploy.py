"""``voxbatch vllm``: start (or print) the vLLM server that serves Voxtral to the gpu workers."""

from __future__ import annotations

import os
import shutil

import click

from api.cli.common import EXIT_INPUT, fail, load_settings, one_line_errors
from workers.vllm_launch import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_AUDIO_S,
    DEFAULT_PORT,
    VllmOptions,
    build_vllm_launch,
)

GPU_EXTRA_HINT = "vLLM is not installed here; on the GPU machine run: pip install 'voxbatch[gpu]'"


@click.command("vllm", context_settings={"ignore_unknown_options": True})
@click.option("--model", default=None, help="Model to serve (default: VOXBATCH_MODEL).")
@click.option(
    "--profile",
    default=None,
    help="Model profile (default: VOXBATCH_MODEL_PROFILE, else matched from the model name; docs/models.md).",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address vLLM listens on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port vLLM listens on.")
@click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help="GPUs per replica.")
@click.option(
    "--data-parallel-size", type=int, default=1, show_default=True, help="Replicas behind this endpoint."
)
@click.option(
    "--gpu-memory-utilization",
    type=float,
    default=DEFAULT_GPU_MEMORY_UTILIZATION,
    show_default=True,
    help="Share of each GPU's memory vLLM reserves (weights + KV cache).",
)
@click.option(
    "--max-audio-seconds",
    type=float,
    default=DEFAULT_MAX_AUDIO_S,
    show_default=True,
    help="Longest audio vLLM accepts per request (>= 1800 for 30-minute windows).",
)
@click.option(
    "--max-num-seqs",
    type=int,
    default=None,
    help="Requests in flight per replica (default: VOXBATCH_MAX_INFLIGHT, what each worker keeps there).",
)
@click.option(
    "print_only", "--print", is_flag=True, help="Print the command with its environment; run nothing."
)
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def vllm(
    model: str | None,
    profile: str | None,
    host: str,
    port: int,
    tensor_parallel_size: int,
    data_parallel_size: int,
    gpu_memory_utilization: float,
    max_audio_seconds: float,
    max_num_seqs: int | None,
    print_only: bool,
    extra_args: tuple[str, ...],
) -> None:
    """Serve Voxtral with vLLM, with the caps raised for 30-minute windows (extra args go to vllm serve)."""
    settings = load_settings()
    options = VllmOptions(
        model=model or settings.model,
        host=host,
        port=port,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_audio_s=max_audio_seconds,
        # The server's batch holds what a worker keeps in flight: one number on both sides.
        max_num_seqs=max_num_seqs or settings.max_inflight,
        api_key=settings.vllm_api_key,
        extra_args=extra_args,
        profile=profile or settings.model_profile,
    )
    launch = build_vllm_launch(options)
    if print_only:
        click.echo(launch.shell_line())
        return
    # vLLM may live in an environment of its own (it pins its own torch): its executable on PATH
    # is what counts, not whether this interpreter can import it.
    executable = shutil.which(launch.argv[0])
    if executable is None:
        fail(GPU_EXTRA_HINT, EXIT_INPUT)
        return
    env = {**os.environ, **launch.env}
    # exec, not a child: signals from the supervisor or orchestrator reach vLLM itself.
    os.execve(executable, list(launch.argv), env)
