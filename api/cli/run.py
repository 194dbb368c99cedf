"""``voxbatch run``: one recording to documents in this process, on embedded defaults."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Any

import click

from api.cli.common import EXIT_INTERRUPTED, job_options, load_settings, one_line_errors
from api.cli.follow import follow_in_background
from jobs.errors import InputError
from jobs.models import JobStatus
from jobs.options import JobOptions
from jobs.settings import Settings
from jobs.steps.local import copy_documents, job_for_file, run_local


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True, exists=False))
@job_options
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write the documents (document.md, document.json, transcript.txt, .srt, .vtt; "
    "default: voxbatch-output/<recording name>/).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Print each segment as it is transcribed ([00:12:31] text), in recording order.",
)
@one_line_errors
def run(
    file: Path,
    instructions: str | None,
    preset: str | None,
    language: str | None,
    window_minutes: float | None,
    vocabulary: str | None,
    priority: str | None,
    output_dir: Path | None,
    follow: bool,
) -> None:
    """Turn FILE into a document on this machine, in this process (no Redis needed)."""
    from workers.audio import FfmpegAudio
    from workers.engines.scheduler import abort_all
    from workers.runtime import build_runtime

    settings = load_settings()
    options = JobOptions(
        instructions, preset, language, window_minutes, vocabulary=vocabulary, priority=priority
    ).validated(settings)
    path = file.expanduser().absolute()
    # Probe before anything is written: bad input leaves no job, no window, no file behind.
    info = FfmpegAudio().probe(str(path))
    out_dir = output_dir or default_output_dir(path)
    _check_writable(out_dir)
    # The per-job limit on length, before the database is even opened.
    admit_duration(settings, info.duration_s)
    rt = build_runtime(settings)
    job, resumed = job_for_file(rt, path, options, info.duration_s)
    if resumed:
        click.echo(f"voxbatch: resuming job {job.id} ({job.windows_done} windows already done)", err=True)
    click.echo(
        f"voxbatch: job {job.id}: {path.name}, {info.duration_s / 60:.1f} min, engine {rt.engine.name}",
        err=True,
    )
    follower = follow_in_background(rt, job.id) if follow else None
    if job.status != JobStatus.succeeded:
        bar: Any = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if follow:
                return  # the segments are the progress; a bar on stderr would cut their lines
            if bar is None:
                bar = click.progressbar(
                    length=total, label="windows", file=sys.stderr, show_pos=True, show_eta=True
                )
                bar.__enter__()
            bar.update(done - bar.pos)

        try:
            job = run_local(rt, job.id, progress)
        except KeyboardInterrupt:
            # Requests still at the model server are cancelled, so the process exits now instead
            # of waiting for their answers; their windows are pending again, for the next run.
            abort_all()
            _exit_soon_after_interrupt()
            raise
        except BaseException:
            if follower is not None:
                follower[1].set()
            raise
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    if follower is not None:
        follower[0].join()  # the job has ended: the follower prints the rest and stops
    click.echo(str(copy_documents(rt, job, out_dir).absolute()))


INTERRUPT_EXIT_S = 15.0


def _exit_soon_after_interrupt() -> None:
    """A Ctrl-C may land anywhere in this thread, even between a lock's acquire and its release;
    the interpreter then waits at exit for the window threads, which can wait on what it left
    held. Whatever stored is durable (windows and segments are written whole), so past
    ``INTERRUPT_EXIT_S`` the process leaves without them, as a kill would."""

    def leave() -> None:
        sys.stderr.write("voxbatch: the windows did not stop in time; exiting without them\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    timer = threading.Timer(INTERRUPT_EXIT_S, leave)
    timer.daemon = True
    timer.start()


def default_output_dir(path: Path) -> Path:
    """``voxbatch-output/<recording name>``, with control characters (newlines) replaced: the
    path is printed as the last line."""
    stem = "".join("_" if unicodedata.category(ch).startswith("C") else ch for ch in path.stem).strip()
    return Path("voxbatch-output") / (stem or "document")


def admit_duration(settings: Settings, duration_s: float) -> None:
    from jobs.admission import admit_length

    admit_length(settings, duration_s)


def _check_writable(out_dir: Path) -> None:
    """Refuse an output directory that cannot be written before any work is done: one whose
    printed path would not be one line, or where a file cannot be created (tried, not guessed from
    permission bits: root, read-only mounts and ACLs all answer differently)."""
    shown = repr(str(out_dir))[1:-1][:200]
    if any(unicodedata.category(ch).startswith("C") for ch in str(out_dir)):
        raise InputError(f"--output-dir {shown} contains control characters (a newline?)")
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output-dir {shown}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"--output-dir {shown} is not writable ({exc.strerror or exc})") from exc
