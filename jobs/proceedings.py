"""A collection's proceedings: ``collection.md``, ``collection.json`` and a self-contained static
``index.html`` under ``collections/<id>/`` in storage, built when one of its jobs succeeds (the
``proceedings`` step after the reduce, on a gpu worker: ``jobs/steps/next.py``) and again whenever
one more does.

Every talk that has succeeded is listed in the order it was submitted, with its title, duration,
overall summary and links to its document and captions (``talks/<job id>/<name>``: the layout
``voxbatch collection fetch`` writes and ``GET /v1/collections/{id}/documents/talks/…`` serves).
The collection-level summary is one text-only call through the engine, like a job's overall
summary (``jobs/steps/overall.py``): charged to the job that triggered it, and made again only
when the talks' summaries changed (their hash is stored beside it).

Each build records on the jobs it listed that their step is done (``Job.proceedings_at``); a
succeeded job no build has listed, whose step shows no sign of life, lost its message, and the sweep
queues the step again (``workers/sweeper.py``).

Two jobs of a collection finishing at once both build; each rebuilds until the set of finished talks
it has written is the set in the database, so the last writer lists every talk.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
from dataclasses import dataclass
from typing import Any

from jobs.collections import find_by_id, proceedings_prefix
from jobs.documents import DOCUMENT_NAMES
from jobs.models import Collection, Job, JobStatus, utcnow
from jobs.runtime import Runtime
from jobs.shares import charged_to, share_of
from jobs.storage import Storage
from jobs.timecodes import hms

log = logging.getLogger(__name__)

NAMES = {
    "collection.md": "text/markdown; charset=utf-8",
    "collection.json": "application/json",
    "index.html": "text/html; charset=utf-8",
}
SUMMARY_KEY = "summary.json"
# Characters of the talks' summaries in the one summary call (~12k tokens, well inside 32k):
# with many talks each summary is shortened to its share.
SUMMARY_BUDGET_CHARS = 48_000
MAX_BUILDS = 3


@dataclass
class Talk:
    job_id: str
    title: str
    duration_s: float
    language: str | None
    summary: str | None

    def links(self) -> dict[str, str]:
        return {name: f"talks/{self.job_id}/{name}" for name in DOCUMENT_NAMES}


def built(storage: Storage, collection_id: str) -> list[str]:
    """The proceedings' documents that exist."""
    prefix = proceedings_prefix(collection_id)
    return [name for name in NAMES if storage.exists(prefix + name)]


def _talks(rt: Runtime, jobs: list[Job]) -> list[Talk]:
    talks = []
    for job in jobs:
        key = job.output_prefix + "document.json"
        if job.status != JobStatus.succeeded or not rt.storage.exists(key):
            continue  # not finished, or being deleted
        doc = json.loads(rt.storage.get_bytes(key))
        talks.append(
            Talk(
                job_id=job.id,
                title=str(doc.get("title") or job.title or job.source_name),
                duration_s=float(doc.get("duration_s") or job.duration_s or 0.0),
                language=doc.get("language"),
                summary=doc.get("summary") or None,
            )
        )
    return talks


def summary_prompt(collection: Collection, talks: list[Talk]) -> str:
    with_summary = [t for t in talks if t.summary]
    share = max(500, SUMMARY_BUDGET_CHARS // max(1, len(with_summary)))
    body = "\n\n".join(f"[{t.title}]\n{(t.summary or '').strip()[:share]}" for t in with_summary)
    parts = [
        f"Below are the summaries of the {len(with_summary)} recordings of one collection, "
        f"{collection.name!r} (a conference, a series of meetings), each under its title.",
        "Write a summary of the whole collection in Markdown: the main themes across the recordings, "
        "the notable decisions, results and open questions, and which recording covers what (name "
        "recordings by their titles). Use only what the summaries say.",
    ]
    if collection.instructions:
        parts.append(f"Follow these instructions from the user: {collection.instructions.strip()}")
    parts.append("Summaries:\n\n" + body)
    return "\n\n".join(parts)


def _collection_summary(
    rt: Runtime, collection: Collection, talks: list[Talk], trigger: Job | None
) -> str | None:
    """The collection-level summary: one text-only model call, reused while the inputs are the same
    (and, with no ``trigger``, reused as it is: a rebuild after a deletion makes no model call)."""
    key = proceedings_prefix(collection.id) + SUMMARY_KEY
    stored = json.loads(rt.storage.get_bytes(key)) if rt.storage.exists(key) else {}
    if trigger is None:
        return stored.get("summary") or None
    if not rt.engine.capabilities.summaries or not any(t.summary for t in talks):
        return None
    prompt = summary_prompt(collection, talks)
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    if stored.get("inputs") == digest:
        return stored.get("summary") or None
    with charged_to(share_of(trigger)):
        summary = rt.engine.complete(prompt).strip() or None
    rt.storage.put_bytes(key, json.dumps({"inputs": digest, "summary": summary}, ensure_ascii=False).encode())
    return summary


def build(rt: Runtime, job_id: str) -> list[str]:
    """Build the proceedings of the collection of ``job_id``; returns the talks listed."""
    trigger = rt.store.find(job_id)
    if trigger is None or not trigger.collection_id:
        return []  # deleted meanwhile, or in no collection
    return _build(rt, trigger.collection_id, trigger)


def rebuild_without_model(rt: Runtime, collection_id: str) -> list[str]:
    """After one of its jobs was deleted: the lists again, the stored summary as it is (no model
    call; the next job that succeeds brings it up to date). Nothing left: no proceedings."""
    if not rt.store.in_collection(collection_id):
        for key in list(rt.storage.list(proceedings_prefix(collection_id))):
            rt.storage.delete(key)
        return []
    return _build(rt, collection_id, None)


def _build(rt: Runtime, collection_id: str, trigger: Job | None) -> list[str]:
    collection = find_by_id(rt.db, collection_id)
    if collection is None:
        return []  # deleted meanwhile
    listed: list[str] | None = None  # what the last write listed
    for _ in range(MAX_BUILDS):
        jobs = rt.store.in_collection(collection.id)
        talks = _talks(rt, jobs)
        if [t.job_id for t in talks] == listed:
            break
        summary = _collection_summary(rt, collection, talks, trigger)
        pending = sum(
            1 for j in jobs if j.status not in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
        )
        data = to_dict(collection, talks, summary, pending)
        prefix = proceedings_prefix(collection.id)
        rt.storage.put_bytes(
            prefix + "collection.json", (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode()
        )
        rt.storage.put_bytes(prefix + "collection.md", render_markdown(data).encode())
        rt.storage.put_bytes(prefix + "index.html", render_html(data).encode())
        listed = [t.job_id for t in talks]
        # Their proceedings step is done, whichever job's message brought this build.
        rt.store.listed_in_proceedings(listed)
    log.info("collection %s: proceedings built with %d talk(s)", collection.id, len(listed or []))
    return listed or []


def to_dict(collection: Collection, talks: list[Talk], summary: str | None, pending: int) -> dict[str, Any]:
    return {
        "id": collection.id,
        "name": collection.name,
        "built_at": utcnow().isoformat(),
        "summary": summary,
        "duration_s": round(sum(t.duration_s for t in talks), 3),
        "pending": pending,
        "talks": [
            {
                "job_id": t.job_id,
                "title": t.title,
                "duration_s": round(t.duration_s, 3),
                "language": t.language,
                "summary": t.summary,
                "documents": t.links(),
            }
            for t in talks
        ],
    }


def _md(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(data: dict[str, Any]) -> str:
    out = [f"# {_md(data['name'])}", ""]
    n = len(data["talks"])
    out += [f"{n} recording{'s' if n != 1 else ''}, {hms(data['duration_s'])} in all."]
    if data["pending"]:
        out += ["", f"{data['pending']} more still being transcribed."]
    if data["summary"]:
        out += ["", "## Summary", "", _md(data["summary"])]
    out += ["", "## Recordings"]
    for t in data["talks"]:
        docs = t["documents"]
        out += [
            "",
            f"### {_md(t['title'])}",
            "",
            f"{hms(t['duration_s'])} · [document]({docs['document.md']}) · "
            f"[captions]({docs['transcript.vtt']})",
        ]
        if t["summary"]:
            out += ["", _md(t["summary"])]
    return "\n".join(out) + "\n"


_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "h1{margin-bottom:.2rem}.meta{color:#666}.summary{white-space:pre-wrap}"
    "article{border-top:1px solid #ddd;padding:.5rem 0}"
)


def render_html(data: dict[str, Any]) -> str:
    """A static page with no script and nothing fetched: every value escaped, summaries as text."""
    e = html.escape
    n = len(data["talks"])
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(data['name'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(data['name'])}</h1>",
        f'<p class="meta">{n} recording{"s" if n != 1 else ""}, {e(hms(data["duration_s"]))} in all'
        + (f"; {data['pending']} more still being transcribed" if data["pending"] else "")
        + "</p>",
    ]
    if data["summary"]:
        parts.append(f'<h2>Summary</h2><div class="summary">{e(data["summary"])}</div>')
    parts.append("<h2>Recordings</h2>")
    for t in data["talks"]:
        docs = t["documents"]
        parts.append(
            f'<article id="{e(t["job_id"])}"><h3>{e(t["title"])}</h3>'
            f'<p class="meta">{e(hms(t["duration_s"]))} · <a href="{e(docs["document.md"])}">document</a> · '
            f'<a href="{e(docs["document.json"])}">JSON</a> · '
            f'<a href="{e(docs["transcript.vtt"])}">captions</a></p>'
            + (f'<div class="summary">{e(t["summary"])}</div>' if t["summary"] else "")
            + "</article>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
