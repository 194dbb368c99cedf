"""`voxbatch collection create|show|submit|fetch|delete`: collections of the command line's jobs
(those without a tenant, like `voxbatch submit`'s) or, with ``--tenant NAME``, of an API tenant's
(what its key lists and searches), against the configured database and storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from api.cli.common import (
    checked_tenant,
    collection_hint,
    job_options,
    one_line_errors,
    runtime,
    tenant_option,
)
from jobs.errors import InputError, NotFound
from jobs.runtime import Runtime

if TYPE_CHECKING:
    from jobs.models import Collection


def _get(rt: Runtime, tenant: str | None, name: str) -> Collection:
    """The collection NAME of ``--tenant`` (or the command line's), with a hint when it is not
    there but a tenant has one by that name."""
    from jobs import collections

    try:
        return collections.get(rt.db, checked_tenant(rt, tenant), name)
    except NotFound as exc:
        raise NotFound(f"{exc}{collection_hint(rt, tenant, name)}") from exc


@click.group()
def collection() -> None:
    """Collections: recordings that belong together, their proceedings."""


@collection.command("create")
@click.argument("name")
@job_options
@tenant_option
@one_line_errors
def create(
    name: str,
    instructions: str | None,
    preset: str | None,
    language: str | None,
    window_minutes: float | None,
    vocabulary: str | None,
    priority: str | None,
    tenant: str | None,
) -> None:
    """Create collection NAME with the options its jobs share; prints its id as the last line."""
    from jobs import collections
    from jobs.options import JobOptions

    if window_minutes is not None:
        raise InputError("--window-minutes is a job's option, not a collection's")
    rt = runtime()
    row = collections.create(
        rt.db,
        checked_tenant(rt, tenant),
        name,
        JobOptions(instructions, preset, language, vocabulary=vocabulary, priority=priority),
    )
    click.echo(f"voxbatch: collection {row.name!r} created", err=True)
    click.echo(row.id)


@collection.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@tenant_option
@one_line_errors
def show(name: str, as_json: bool, tenant: str | None) -> None:
    """A collection's options, its jobs and their states, and its proceedings."""
    from jobs import proceedings

    rt = runtime()
    row = _get(rt, tenant, name)
    jobs = rt.store.in_collection(row.id)
    built = proceedings.built(rt.storage, row.id)
    if as_json:
        data = {
            **row.model_dump(mode="json"),
            "jobs": [
                {"id": j.id, "status": j.status, "source_name": j.source_name, "title": j.title} for j in jobs
            ],
            "documents": built,
        }
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{row.name} ({row.id}): {len(jobs)} job(s); proceedings: {', '.join(built) or 'not built yet'}"
    )
    for j in jobs:
        click.echo(f"  {j.id}  {j.status:<12}  {j.title or j.source_name}")


@collection.command("submit")
@click.argument("name")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@tenant_option
@one_line_errors
def submit(name: str, manifest: Path, tenant: str | None) -> None:
    """Submit every recording a manifest (CSV or JSONL: source, title, speakers, vocabulary) lists
    into collection NAME; nothing is submitted unless every row is right. Prints the job ids."""
    from jobs import manifest as manifests
    from workers.submission import probe_s3, submit_manifest
    from workers.submission import submit as submit_job

    rt = runtime()
    tenant = _get(rt, tenant, name).tenant
    rows = manifests.parse(manifest.read_bytes(), manifest.name)
    base = manifest.parent.absolute()

    def located(row: manifests.ManifestRow) -> str:
        if row.source.startswith("s3://"):
            return row.source
        return str((base / Path(row.source).expanduser()).absolute())

    def probe(row: manifests.ManifestRow) -> float:
        source = located(row)
        if source.startswith("s3://"):
            return probe_s3(rt, source)
        if not Path(source).is_file():
            raise InputError(f"{row.source} is not a file")
        return rt.audio.probe(source).duration_s

    jobs = submit_manifest(
        rt, tenant, name, rows, probe, lambda row, opts: submit_job(rt, located(row), opts, tenant=tenant)
    )
    click.echo(f"voxbatch: {len(jobs)} job(s) queued into {name!r}", err=True)
    for job in jobs:
        click.echo(job.id)


@collection.command("fetch")
@click.argument("name")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where to write index.html, collection.md, collection.json and talks/<job id>/.",
)
@tenant_option
@one_line_errors
def fetch(name: str, output_dir: Path, tenant: str | None) -> None:
    """Download the proceedings and every finished talk's documents; prints the path of index.html."""
    from jobs import collections, proceedings
    from jobs.models import JobStatus
    from jobs.steps.local import copy_documents

    rt = runtime()
    row = _get(rt, tenant, name)
    built = proceedings.built(rt.storage, row.id)
    if not built:
        raise InputError(
            f"collection {row.name!r} has no proceedings yet: they are built when one of its jobs succeeds"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    for doc in built:
        rt.storage.download(collections.proceedings_prefix(row.id) + doc, output_dir / doc)
    for job in rt.store.in_collection(row.id):
        if job.status == JobStatus.succeeded:
            copy_documents(rt, job, output_dir / "talks" / job.id)
    click.echo(str((output_dir / "index.html").absolute()))


@collection.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@tenant_option
@one_line_errors
def delete(name: str, yes: bool, tenant: str | None) -> None:
    """Delete collection NAME with its jobs' documents, index rows and stored recordings."""
    from jobs import retention

    rt = runtime()
    tenant = _get(rt, tenant, name).tenant
    if not yes:
        click.confirm(f"delete collection {name!r} and every job in it?", abort=True)
    count = retention.delete_collection(rt, tenant, name)
    click.echo(f"voxbatch: collection {name!r} deleted with {count} job(s)", err=True)
