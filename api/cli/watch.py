"""``voxbatch watch``: the S3 drop-folder watcher.

``--once`` does one full scan and exits 0 when the scan worked, whatever it found (rejected
recordings get their error.json and still count as handled); it exits 1 when some recordings
could not be submitted this time (broker or storage trouble; the next scan takes them again) and
2 when the inbox cannot be listed (no such bucket, access denied, settings missing).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from api.cli.common import EXIT_FAILED, fail, load_settings, one_line_errors
from jobs.errors import InputError


@click.command()
@click.option("--once", is_flag=True, help="Scan the inbox once, then exit.")
@click.option(
    "--interval",
    type=float,
    default=None,
    help="Seconds between scans (default VOXBATCH_WATCH_INTERVAL_S, 60).",
)
@one_line_errors
def watch(once: bool, interval: float | None) -> None:
    """Turn every recording dropped under VOXBATCH_DROP_URL into documents under VOXBATCH_OUTBOX_URL."""
    from workers.outbox import DropFolder
    from workers.watcher import Watcher, celery_submitter

    settings = load_settings()
    if interval is not None:
        if interval <= 0:
            raise InputError("--interval must be a positive number of seconds")
        settings = settings.model_copy(update={"watch_interval_s": interval})
    DropFolder.from_settings(settings)  # missing settings fail before anything is created
    db, submit = celery_submitter(settings)
    watcher = Watcher(settings, db, submit)
    if once:
        report = watcher.scan()
        click.echo(
            f"voxbatch: scanned {watcher.folder.bucket}/{watcher.folder.prefix}: {report.listed} objects, "
            f"{report.recordings} recordings, {len(report.submitted)} submitted, "
            f"{len(report.rejected)} rejected, {len(report.deferred)} deferred",
            err=True,
        )
        for job_id in report.submitted:
            click.echo(job_id)
        if report.deferred:
            fail(
                f"{len(report.deferred)} recording(s) could not be submitted; the next scan retries",
                EXIT_FAILED,
            )
        return
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"voxbatch: watching s3://{watcher.folder.bucket}/{watcher.folder.prefix} every "
        f"{settings.watch_interval_s:g} s" + (" and its SQS queue" if watcher.sqs is not None else ""),
        err=True,
    )
    watcher.run(stop)
