"""``voxbatch run``: one recording to documents in this process, on embedded defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from api.cli.common import job_options, load_settings, one_line_errors
from jobs.errors import InputError
from jobs.models import JobStatus
from jobs.options import JobOptions
from jobs.steps.local import copy_documents, job_for_file, run_local


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True, exists=False))
@job_options
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write document.md, document.json and transcript.txt "
    "(default: voxbatch-output/<recording name>/).",
)
@one_line_errors
def run(
    file: Path,
    instructions: str | None,
    preset: str | None,
    language: str | None,
    window_minutes: float | None,
    output_dir: Path | None,
) -> None:
    """Turn FILE into a document on this machine, in this process (no Redis needed)."""
    from workers.audio import FfmpegAudio
    from workers.runtime import build_runtime

    settings = load_settings()
    options = JobOptions(instructions, preset, language, window_minutes).validated(settings)
    path = file.expanduser().absolute()
    # Probe before anything is written: bad input leaves no job, no window, no file behind.
    info = FfmpegAudio().probe(str(path))
    out_dir = output_dir or Path("voxbatch-output") / (path.stem or "document")
    _check_writable(out_dir)
    rt = build_runtime(settings)
    job, resumed = job_for_file(rt, path, options)
    if resumed:
        click.echo(f"voxbatch: resuming job {job.id} ({job.windows_done} windows already done)", err=True)
    click.echo(
        f"voxbatch: job {job.id}: {path.name}, {info.duration_s / 60:.1f} min, engine {rt.engine.name}",
        err=True,
    )
    if job.status != JobStatus.succeeded:
        bar: Any = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = click.progressbar(
                    length=total, label="windows", file=sys.stderr, show_pos=True, show_eta=True
                )
                bar.__enter__()
            bar.update(done - bar.pos)

        try:
            job = run_local(rt, job.id, progress)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    click.echo(str(copy_documents(rt, job, out_dir).absolute()))


def _check_writable(out_dir: Path) -> None:
    """Refuse an output directory that cannot be written before any work is done."""
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output-dir {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--output-dir {out_dir} is not writable")
