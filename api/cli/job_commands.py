"""Job commands against the configured broker and database: submit, status, wait, fetch, cancel,
retry, list."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from api.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    checked_tenant,
    collection_hint,
    job_options,
    load_settings,
    one_line_errors,
    runtime,
    tenant_option,
)
from api.cli.follow import Follower
from jobs.errors import InputError, NotFound
from jobs.models import Job, JobStatus
from jobs.runtime import Runtime
from jobs.steps.local import copy_documents
from jobs.timings import job_timings

EXIT_TIMEOUT = 2
POLL_S = 0.5


def job_report(rt: Runtime, job: Job) -> dict[str, Any]:
    """What `status --json` prints: the job row, progress and how long each stage took."""
    windows = rt.store.windows(job.id)
    return {
        **job.model_dump(mode="json"),
        "progress": {
            "windows_done": job.windows_done,
            "windows_total": job.windows_total,
            "segments_done": job.segments_done,
            "segments_total": job.segments_total,
        },
        "timings_s": job_timings(job),
        "window_engine_s": round(sum(w.engine_s for w in windows if w.engine_s is not None), 3),
        "windows": [
            {
                "index": w.index,
                "start_s": w.start_s,
                "end_s": w.end_s,
                "status": w.status,
                "attempts": w.attempts,
                "engine_s": w.engine_s,
                "error": w.error,
            }
            for w in windows
        ],
    }


@click.command()
@click.argument("source")
@job_options
@click.option(
    "--collection", default=None, help="Join this collection (name or id): its options are the defaults."
)
@click.option("--title", default=None, help="The document's title (default: the file's name).")
@tenant_option
@click.option(
    "--webhook-url", default=None, help="POSTed the job as JSON when it ends (as the API's webhook_url)."
)
@click.option(
    "--webhook-events",
    default=None,
    help="Which events the webhook gets, comma-separated: window.done, job.done (default job.done).",
)
@one_line_errors
def submit(
    source: str,
    instructions: str | None,
    preset: str | None,
    language: str | None,
    window_minutes: float | None,
    vocabulary: str | None,
    priority: str | None,
    collection: str | None,
    title: str | None,
    tenant: str | None,
    webhook_url: str | None,
    webhook_events: str | None,
) -> None:
    """Put FILE or s3://bucket/key on the workers' queue; prints the job id as its last line."""
    from jobs.options import JobOptions
    from workers.submission import submit as submit_job

    settings = load_settings()
    options = JobOptions(
        instructions,
        preset,
        language,
        window_minutes,
        vocabulary=vocabulary,
        priority=priority,
        collection=collection,
        title=title,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
    )
    options.validated(settings)  # checked before the file is probed; the collection's fill in later
    if webhook_url:
        from workers.webhooks import check_url

        check_url(webhook_url, settings.webhook_allow_private)  # the address the API would refuse
    if not source.startswith("s3://"):
        from workers.audio import FfmpegAudio

        path = Path(source).expanduser().absolute()
        if not path.is_file():
            raise InputError(f"{source} is not a file")
        # Probe here: a file ffmpeg cannot read never becomes a job.
        FfmpegAudio().probe(str(path))
        source = str(path)
    rt = runtime()
    try:
        job = submit_job(rt, source, options, tenant=checked_tenant(rt, tenant))
    except NotFound as exc:  # the collection: say which tenant has one by that name
        raise NotFound(f"{exc}{collection_hint(rt, tenant, collection)}") from exc
    click.echo(f"voxbatch: job {job.id} queued ({job.source_name})", err=True)
    click.echo(job.id)


@click.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@click.option(
    "--fleet",
    is_flag=True,
    help="Instead of a job: the backlog in estimated GPU seconds by queue, tenant and priority, "
    "jobs waiting to be reduced, the drop folder's backlog and the queues.",
)
@one_line_errors
def status(job_id: str | None, as_json: bool, fleet: bool) -> None:
    """Show a job (status, progress, time per stage, failure reason), or the fleet with --fleet."""
    if fleet == (job_id is not None):
        raise InputError("give a JOB id or --fleet (not both)")
    rt = runtime()
    if job_id is None:
        fleet_report(rt, as_json)
        return
    report = job_report(rt, rt.store.get(job_id))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    total = report["windows_total"]
    click.echo(f"job       {report['id']}  {report['source_name']}")
    click.echo(f"status    {report['status']}")
    segments = report["segments_total"]
    click.echo(
        f"progress  {report['windows_done']}/{total if total is not None else '?'} windows, "
        f"{report['segments_done']}/{segments if segments is not None else '?'} segments"
    )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_s"].items() if v is not None)
    if stages:
        click.echo(f"timings   {stages}")
    if report["error"]:
        click.echo(f"reason    {report['error']}")


def fleet_report(rt: Runtime, as_json: bool) -> None:
    """`status --fleet`: what the autoscaler and an operator read (workers/fleet.py)."""
    from workers.fleet import fleet
    from workers.submission import redacted

    now = fleet(rt)
    cost = rt.settings.gpu_seconds_per_audio_second
    if as_json:
        report = {
            "gpu_seconds_per_audio_second": cost,
            "backlog": [vars(b) for b in now.backlog],
            "gpu_backlog_s": now.gpu_seconds(),
            "waiting_reduce": now.reducing,
            "drop": now.drop,
            "queues": now.queues,
        }
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"backlog (estimated GPU seconds: audio seconds x {cost:g}, VOXBATCH_GPU_SECONDS_PER_AUDIO_SECOND)"
    )
    rows = [[b.queue, b.tenant, b.priority, f"{b.audio_s:.0f}", f"{b.gpu_s:.0f}"] for b in now.backlog]
    total_audio = sum(b.audio_s for b in now.backlog)
    rows.append(["total", "", "", f"{total_audio:.0f}", f"{now.gpu_seconds():.0f}"])
    _table(["queue", "tenant", "priority", "audio_s", "gpu_s"], rows)
    click.echo("\nwaiting to be reduced")
    _table(["tenant", "jobs"], [[t, str(n)] for t, n in now.reducing.items()] or [["(none)", "0"]])
    click.echo("\ndrop folder")
    _table(list(now.drop), [[str(n) for n in now.drop.values()]])
    click.echo("\nqueues (messages waiting)")
    if now.queues is None:
        click.echo(f"broker unreachable at {redacted(rt.settings.broker_url)}")
    else:
        _table(["queue", "messages"], [[q, str(n)] for q, n in now.queues.items()])


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell; a column whose cells are all numbers is right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = [all(r[i].replace(".", "").isdigit() for r in rows if r[i]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        click.echo("  ".join(cells).rstrip())


@click.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after S seconds (exit 2).")
@click.option(
    "--follow",
    is_flag=True,
    help="Print each segment as it is transcribed ([00:12:31] text), then the path of document.md.",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="With --follow: copy the documents here (else the path printed is where storage keeps them).",
)
@one_line_errors
def wait(job_id: str, timeout: float | None, follow: bool, output_dir: Path | None) -> None:
    """Wait for a job: exit 0 succeeded, 1 failed or cancelled, 2 timeout."""
    rt = runtime()
    deadline = None if timeout is None else time.monotonic() + timeout
    if follow:
        found = Follower(rt, job_id).until_over(threading.Event(), deadline)
        job = found or rt.store.get(job_id)
    while not follow:
        job = rt.store.get(job_id)
        if JobStatus(job.status).finished:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if not JobStatus(job.status).finished:
        click.echo(
            f"voxbatch: job {job_id} is still {job.status} "
            f"({job.windows_done}/{job.windows_total or '?'} windows) after {timeout:g} s",
            err=True,
        )
        sys.exit(EXIT_TIMEOUT)
    if job.status == JobStatus.succeeded:
        if not follow:
            click.echo(f"job {job_id} succeeded")
        elif output_dir is not None:
            click.echo(str(copy_documents(rt, job, output_dir).absolute()))
        else:
            click.echo(rt.storage.readable_url(job.output_prefix + "document.md"))
        return
    reason = f": {job.error}" if job.error else ""
    click.echo(f"voxbatch: job {job_id} {job.status}{reason}", err=True)
    sys.exit(EXIT_FAILED)


@click.command()
@click.argument("job_id")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where to write the documents (document.md, document.json, transcript.txt, .srt, .vtt).",
)
@one_line_errors
def fetch(job_id: str, output_dir: Path) -> None:
    """Download a finished job's documents; prints the path of document.md."""
    rt = runtime()
    job = rt.store.get(job_id)
    if job.status != JobStatus.succeeded:
        raise InputError(f"job {job_id} is {job.status}; documents exist once it has succeeded")
    click.echo(str(copy_documents(rt, job, output_dir).absolute()))


@click.command()
@click.argument("job_id")
@one_line_errors
def cancel(job_id: str) -> None:
    """Cancel a job; windows already done are kept for `voxbatch retry`."""
    from jobs.steps.ending import cancel as cancel_job

    job = cancel_job(runtime(), job_id)
    click.echo(f"job {job.id} {job.status}")


@click.command()
@click.argument("job_id")
@one_line_errors
def retry(job_id: str) -> None:
    """Resume a failed or cancelled job from the windows already done."""
    from workers.submission import resume

    job = resume(runtime(), job_id)
    click.echo(
        f"job {job.id} {job.status} ({job.windows_done}/{job.windows_total or '?'} windows already done)"
    )


@click.command("list")
@click.option(
    "--status",
    "status_filter",
    type=click.Choice([s.value for s in JobStatus]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--limit", type=int, default=20, show_default=True)
@one_line_errors
def list_jobs(status_filter: str | None, limit: int) -> None:
    """Recent jobs, newest first."""
    if limit < 1:
        click.echo("voxbatch: error: --limit must be at least 1", err=True)
        sys.exit(EXIT_INPUT)
    jobs, _ = runtime().store.list_jobs(status=status_filter, limit=limit)
    for job in jobs:
        progress = f"{job.windows_done}/{job.windows_total if job.windows_total is not None else '?'}"
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{job.id}  {job.status:<12}  {progress:>7}  {created}  {job.source_name}")


@click.command()
@click.argument("job_id")
@one_line_errors
def delete(job_id: str) -> None:
    """Delete a job that has ended: its documents, segments, search index rows and the copy of the
    recording stored for it (never an s3:// or drop-folder source)."""
    from jobs.retention import delete_job

    delete_job(runtime(), job_id)
    click.echo(f"voxbatch: job {job_id} deleted", err=True)
