"""A manifest: the recordings of a collection handed over at once, as CSV (a header row) or JSONL
(one object a line), with the fields ``source`` (a local file or upload name, or ``s3://bucket/key``),
``title``, ``speakers`` (names; ``;``-separated in CSV, a list or a string in JSONL) and
``vocabulary`` (extra terms, comma-separated).

It is checked whole before any job is made (``check``): every row's fields, duplicate sources,
every source found and probed as audio (by the caller's ``probe``), each recording's length, and
the totals (rows, hours, the tenant's load); each problem is one line of ``ManifestRefused``, and
nothing is submitted while there is one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from jobs.errors import InputError, VoxbatchError
from jobs.options import JobOptions, check_title, check_vocabulary

FIELDS = ("source", "title", "speakers", "vocabulary")
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_MANIFEST_ROWS = 500
MAX_PROBLEMS = 50  # lines listed; a count says how many more


class ManifestRefused(InputError):
    """The manifest was refused whole: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        lines = shown + ([f"... and {more} more problem(s)"] if more else [])
        super().__init__(
            f"the manifest was refused, nothing was submitted ({len(problems)} problem(s)):\n"
            + "\n".join(lines)
        )


@dataclass(frozen=True)
class ManifestRow:
    line: int  # in the file, from 1 (a CSV's header is line 1)
    source: str
    title: str | None = None
    speakers: tuple[str, ...] = ()
    vocabulary: str | None = None

    def options(self, collection: str | None) -> JobOptions:
        """The row's own options: its title, and its speakers and terms as the job's vocabulary
        (the collection's options fill the rest: ``jobs.collections.with_collection``)."""
        terms = "\n".join([*self.speakers, *(self.vocabulary or "").split("\n")]).strip() or None
        return JobOptions(collection=collection, title=self.title, vocabulary=terms)


def _split_names(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        names = [str(v) for v in value]
    else:
        names = str(value or "").replace(";", "\n").split("\n")
    return tuple(n for n in (" ".join(x.split()) for x in names) if n)


def parse(data: bytes, name: str) -> list[ManifestRow]:
    """The rows of a manifest named ``name`` (``.csv``, ``.jsonl`` or ``.ndjson``); ManifestRefused
    with every problem of its fields."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestRefused([f"the manifest is larger than {MAX_MANIFEST_BYTES // 1024} KB"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestRefused(["the manifest is not UTF-8 text"]) from None
    lower = name.lower()
    if lower.endswith(".csv"):
        raw, problems = _csv(text)
    elif lower.endswith((".jsonl", ".ndjson")):
        raw, problems = _jsonl(text)
    else:
        raise ManifestRefused([f"{name[:100]}: a manifest is a .csv or a .jsonl file"])
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, fields in raw:
        where = f"line {line}"
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            problems.append(
                f"{where}: unknown field(s) {', '.join(unknown)[:200]}; allowed: {', '.join(FIELDS)}"
            )
            continue
        source = str(fields.get("source") or "").strip()
        if not source:
            problems.append(f"{where}: no source")
            continue
        if source in seen:
            problems.append(f"{where}: {source[:200]} is listed twice (first on line {seen[source]})")
            continue
        seen[source] = line
        for key in ("title", "vocabulary"):
            if fields.get(key) is not None and not isinstance(fields[key], (str, list)):
                problems.append(f"{where}: {key} must be text")
        try:
            speakers = _split_names(fields.get("speakers"))
            vocab = fields.get("vocabulary")
            vocabulary = ", ".join(map(str, vocab)) if isinstance(vocab, list) else vocab
            row = ManifestRow(
                line=line,
                source=source,
                title=check_title(str(fields["title"]) if fields.get("title") is not None else None),
                speakers=speakers,
                vocabulary=check_vocabulary(str(vocabulary) if vocabulary is not None else None),
            )
            check_vocabulary("\n".join([*row.speakers, *(row.vocabulary or "").split("\n")]))
        except InputError as exc:
            problems.append(f"{where}: {exc}")
            continue
        rows.append(row)
    if not raw and not problems:
        problems.append("the manifest lists no recordings")
    if len(raw) > MAX_MANIFEST_ROWS:
        problems.append(f"the manifest lists {len(raw)} recordings; at most {MAX_MANIFEST_ROWS} at once")
    if problems:
        raise ManifestRefused(sorted(problems, key=_line_of))
    return rows


def _line_of(problem: str) -> int:
    """Problems are listed in the file's order; those about the whole manifest last."""
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 1 << 30


def _csv(text: str) -> tuple[list[tuple[int, dict[str, object]]], list[str]]:
    reader = csv.reader(io.StringIO(text))
    problems: list[str] = []
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], ["the manifest is empty"]
    except csv.Error as exc:
        return [], [f"line 1: {exc}"]
    if "source" not in header:
        return [], ["line 1: the header has no 'source' column"]
    rows: list[tuple[int, dict[str, object]]] = []
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(header):
                problems.append(f"line {line}: {len(values)} values for {len(header)} columns")
                continue
            rows.append((line, {h: v for h, v in zip(header, values, strict=False) if v.strip()}))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: {exc}")
    return rows, problems


def _jsonl(text: str) -> tuple[list[tuple[int, dict[str, object]]], list[str]]:
    rows: list[tuple[int, dict[str, object]]] = []
    problems: list[str] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            problems.append(f"line {line}: not JSON ({str(exc)[:100]})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {line}: not a JSON object")
            continue
        rows.append((line, value))
    return rows, problems


@dataclass(frozen=True)
class Limits:
    max_duration_s: float  # one recording
    max_jobs: int  # jobs the tenant may still start
    max_seconds: float  # audio the tenant may still queue


def check(rows: list[ManifestRow], probe: Callable[[ManifestRow], float], limits: Limits) -> list[float]:
    """Probe every row's source (``probe`` answers its length in seconds, or raises); refuse the
    whole manifest with one line per problem. Returns the lengths, in the rows' order."""
    problems: list[str] = []
    lengths: list[float] = []
    for row in rows:
        try:
            seconds = probe(row)
        except VoxbatchError as exc:
            problems.append(f"line {row.line}: {str(exc)[:300]}")
            lengths.append(0.0)
            continue
        if seconds > limits.max_duration_s:
            problems.append(
                f"line {row.line}: {row.source[:200]} lasts {seconds / 3600:.2f} h; at most "
                f"{limits.max_duration_s / 3600:g} h per recording"
            )
        lengths.append(seconds)
    if len(rows) > limits.max_jobs:
        problems.append(
            f"the manifest lists {len(rows)} recordings; "
            f"you may start {max(0, limits.max_jobs)} more jobs now"
        )
    total = sum(lengths)
    if total > limits.max_seconds:
        problems.append(
            f"the manifest holds {total / 3600:.1f} h of audio; "
            f"you may queue {max(0.0, limits.max_seconds) / 3600:.1f} h more now"
        )
    if problems:
        raise ManifestRefused(problems)
    return lengths


def limits_for(
    max_duration_s: float, load: tuple[int, float], tenant_limits: tuple[int, float] | None
) -> Limits:
    """What a tenant may still submit: its limits less its load (no tenant: no load limits)."""
    if tenant_limits is None:
        return Limits(max_duration_s, 10**9, float("inf"))
    active, queued_s = load
    max_jobs, max_hours = tenant_limits
    return Limits(max_duration_s, max_jobs - active, max_hours * 3600.0 - queued_s)
