"""The ``voxbatch`` command line. Each command is thin: parse, build a Runtime, call the pipeline.

Exit codes: 0 done; 1 the job failed or was cancelled; 2 bad input or usage; 130 interrupted.
Errors print one line on stderr, never a traceback (``--verbose`` logs the details).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from jobs.errors import InputError, JobCancelled, NotFound, TransientError, VoxbatchError
from jobs.logconfig import CLI_FORMAT, configure_logging
from jobs.models import OUTPUT_NAMES, Job, JobStatus
from jobs.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> None:
    click.echo(f"voxbatch: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Turn every error a user can cause into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
        except (InputError, NotFound) as exc:
            fail(f"error: {exc}", EXIT_INPUT)
        except JobCancelled as exc:
            fail(f"{exc}", EXIT_FAILED)
        except TransientError as exc:
            fail(f"failed: {exc}; run the same command again to resume", EXIT_FAILED)
        except VoxbatchError as exc:
            fail(f"failed: {exc}", EXIT_FAILED)
        except ValueError as exc:  # pydantic settings validation and the like
            fail(f"error: {exc}", EXIT_INPUT)

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's ValidationError names the variable
        first = str(exc).splitlines()
        raise InputError("bad VOXBATCH_ setting: " + " ".join(first[:3])) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what every step does (to stderr).")
@click.version_option(package_name="voxbatch")
def cli(verbose: bool) -> None:
    """voxbatch: long recordings in, finished documents out."""
    # Long-running commands (worker, api, up) reconfigure with timestamps; one-shot commands
    # print warnings as plain lines.
    configure_logging(verbose, fmt=CLI_FORMAT)


def job_options(fn: F) -> F:
    """The options shared by `run` and `submit`."""
    fn = click.option(
        "--window-minutes",
        type=float,
        default=None,
        help="Longest window sent to the model, in minutes (1-30; default 30).",
    )(fn)
    fn = click.option(
        "--language", default=None, help="ISO 639-1 code of the spoken language (default: detected)."
    )(fn)
    fn = click.option(
        "--preset", default=None, help="conference-talk (default), panel, meeting, lecture or voice-journal."
    )(fn)
    fn = click.option(
        "--instructions", default=None, help="Your own words on what the summaries should say or look like."
    )(fn)
    return fn


def fingerprint(path: Path, parts: dict[str, Any]) -> str:
    """Same recording (by content) and same options → same job, so a re-run resumes it."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def copy_outputs(rt: Any, job: Job, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_NAMES:
        rt.storage.download(job.output_prefix + name, out_dir / name)
    return out_dir / "document.md"


@cli.command()
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
    from jobs import pipeline
    from workers.audio import FfmpegAudio
    from workers.runtime import build_runtime

    settings = load_settings()
    options = pipeline.JobOptions(instructions, preset, language, window_minutes).validated(settings)
    path = file.expanduser().absolute()
    # Probe before anything is written: bad input leaves no job, no window, no file behind.
    info = FfmpegAudio().probe(str(path))
    rt = build_runtime(settings)
    engine = rt.engine
    key = fingerprint(path, {"options": options.__dict__, "engine": engine.name, "model": engine.model})
    job = pipeline.find_resumable(rt, key)
    if job is not None and job.status != JobStatus.succeeded:
        job = pipeline.prepare_rerun(rt, job)
        click.echo(f"voxbatch: resuming job {job.id} ({job.windows_done} windows already done)", err=True)
    elif job is None:
        job = pipeline.create_job(rt, str(path), options, source_name=path.name, fingerprint=key)
    click.echo(
        f"voxbatch: job {job.id}: {path.name}, {info.duration_s / 60:.1f} min, engine {engine.name}", err=True
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
            job = pipeline.run_local(rt, job.id, progress)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    out_dir = output_dir or Path("voxbatch-output") / (path.stem or job.id)
    document = copy_outputs(rt, job, out_dir)
    click.echo(str(document.absolute()))


def main() -> None:
    cli()


# Commands defined in their own modules register themselves on `cli` when imported.
from api import cli_api, cli_deploy, cli_jobs, cli_services, cli_watch  # noqa: E402,F401

if __name__ == "__main__":
    main()
