"""Full-text search across a tenant's transcripts: the one owner of ``searchsegment`` and ``searchdoc``.

A job's speech segments are indexed when its documents are stored (``jobs/steps/reduce.py``) and
removed with the job (``jobs/retention.py``). The database searches: PostgreSQL a ``tsvector`` per
segment under a GIN index, built with the text-search configuration of the job's language
(``REGCONFIG``, ``simple`` for the others: no stemming, no stop words); SQLite (the embedded
default) FTS5 tables with this table as external content, the Porter stemmer for English and plain
Unicode words for the others (``FTS_TABLES``).

A query is the user's words and "quoted phrases": it is cut into word tokens here
(``parse_query``), at most ``MAX_QUERY_CHARS`` characters and ``MAX_QUERY_TERMS`` words, and
reaches the database only as bound parameters, never as SQL text nor as FTS5 query syntax (each
token is quoted). Every query is scoped to one tenant; hits name the job, the segment, its times
and a snippet in which the matched words are wrapped in ``<mark>`` and everything else is
HTML-escaped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, cast, delete, func, literal, literal_column, or_, select, text
from sqlalchemy.dialects.postgresql import REGCONFIG as REGCONFIG_TYPE
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlmodel import col

from jobs.db import Database
from jobs.errors import InputError
from jobs.models import SearchDoc, SearchSegment, utcnow

MAX_QUERY_CHARS = 200
MAX_QUERY_TERMS = 16
MAX_HITS = 100

# ISO 639-1 → PostgreSQL's built-in text-search configurations (PostgreSQL 13 and later have all
# of them); any other language, or none, is indexed with 'simple'.
REGCONFIG = {
    "ar": "arabic",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "ga": "irish",
    "hu": "hungarian",
    "id": "indonesian",
    "it": "italian",
    "lt": "lithuanian",
    "ne": "nepali",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
}
CONFIGS = frozenset({*REGCONFIG.values(), "simple"})

# SQLite: the FTS5 table of each tokenizer (migration 0007 makes them) and the configurations it holds.
FTS_STEMMED = "searchsegment_fts_stem"  # Porter: English
FTS_PLAIN = "searchsegment_fts_plain"  # Unicode words: every other language
FTS_TABLES = (FTS_STEMMED, FTS_PLAIN)

# Marks around matched words, made by the database and turned into <mark> after escaping; they are
# removed from the indexed text so a transcript cannot forge them.
_OPEN, _CLOSE = "\ue000", "\ue001"
_WORD = re.compile(r"\w+")
SNIPPET_WORDS = 24


def config_for(language: str | None) -> str:
    return REGCONFIG.get((language or "").strip().lower(), "simple")


def fts_table(config: str) -> str:
    return FTS_STEMMED if config == "english" else FTS_PLAIN


@dataclass(frozen=True)
class Query:
    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]

    def fts5(self) -> str:
        """The FTS5 query: every word and phrase quoted (tokens hold word characters only)."""
        parts = [f'"{w}"' for w in self.words] + ['"' + " ".join(p) + '"' for p in self.phrases]
        return " ".join(parts)


def parse_query(q: str) -> Query:
    """Words and "quoted phrases" (all must match); InputError when too long or empty."""
    if len(q) > MAX_QUERY_CHARS:
        raise InputError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    words: list[str] = []
    phrases: list[tuple[str, ...]] = []
    for n, part in enumerate(q.split('"')):
        tokens = _WORD.findall(part.lower())
        if n % 2 == 1 and len(tokens) > 1:
            phrases.append(tuple(tokens))
        else:
            words.extend(t for t in tokens if t not in words)
    if not words and not phrases:
        raise InputError("the query has no words to search for")
    if len(words) + sum(len(p) for p in phrases) > MAX_QUERY_TERMS:
        raise InputError(f"the query has more than {MAX_QUERY_TERMS} words")
    return Query(tuple(words), tuple(phrases))


@dataclass(frozen=True)
class Hit:
    job_id: str
    segment: int
    start_s: float
    end_s: float
    snippet: str  # HTML-escaped, matched words in <mark>


def _snippet(raw: str | None) -> str:
    escaped = html.escape(raw or "", quote=False)
    return escaped.replace(_OPEN, "<mark>").replace(_CLOSE, "</mark>")


def _clean(text_: str) -> str:
    return text_.replace(_OPEN, "").replace(_CLOSE, "")


# --- indexing -----------------------------------------------------------------------------------


def index_job(
    db: Database,
    job_id: str,
    tenant: str | None,
    collection_id: str | None,
    language: str | None,
    segments: Iterable[Mapping[str, Any]],
) -> int:
    """Index a job's segments (``Document.segments()``), replacing what it had: one transaction, so
    a reduce run twice leaves one copy. Returns how many segments are indexed."""
    config = config_for(language)
    rows: list[dict[str, Any]] = [
        {
            "job_id": job_id,
            "tenant": tenant,
            "collection_id": collection_id,
            "segment": int(seg["index"]),
            "start_s": float(seg["start_s"]),
            "end_s": float(seg["end_s"]),
            "text": _clean(str(seg["text"])),
            "config": config,
        }
        for seg in segments
        if str(seg.get("text") or "").strip()
    ]
    with db.begin() as conn:
        _unindex(conn, job_id)
        if rows:
            conn.execute(SearchSegment.__table__.insert(), rows)  # type: ignore[attr-defined]
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "UPDATE searchsegment SET tsv = to_tsvector(CAST(config AS regconfig), text) "
                        "WHERE job_id = :j"
                    ),
                    {"j": job_id},
                )
            else:
                conn.execute(
                    text(
                        f"INSERT INTO {fts_table(config)} (rowid, text) "
                        "SELECT id, text FROM searchsegment WHERE job_id = :j"
                    ),
                    {"j": job_id},
                )
        conn.execute(
            SearchDoc.__table__.insert(),  # type: ignore[attr-defined]
            {
                "job_id": job_id,
                "tenant": tenant,
                "collection_id": collection_id,
                "config": config,
                "segments": len(rows),
                "chars": sum(len(str(r["text"])) for r in rows),
                "indexed_at": utcnow(),
            },
        )
    return len(rows)


def unindex_job(db: Database, job_id: str) -> None:
    """Remove a job's segments from the index (nothing to do when it has none)."""
    with db.begin() as conn:
        _unindex(conn, job_id)


def _unindex(conn: Connection, job_id: str) -> None:
    if conn.dialect.name == "sqlite":
        # External-content FTS5: a row leaves the index by the 'delete' command with its old text.
        for table in FTS_TABLES:
            configs = ("english",) if table == FTS_STEMMED else tuple(sorted(CONFIGS - {"english"}))
            conn.execute(
                text(
                    f"INSERT INTO {table} ({table}, rowid, text) SELECT 'delete', id, text "
                    "FROM searchsegment WHERE job_id = :j AND config IN :configs"
                ).bindparams(bindparam("configs", expanding=True)),
                {"j": job_id, "configs": list(configs)},
            )
    conn.execute(delete(SearchSegment).where(col(SearchSegment.job_id) == job_id))
    conn.execute(delete(SearchDoc).where(col(SearchDoc.job_id) == job_id))


def indexed(db: Database, job_id: str) -> int | None:
    """How many segments of the job are indexed; None when the job is not in the index."""
    with db.session() as s:
        doc = s.get(SearchDoc, job_id)
        return doc.segments if doc else None


# --- searching ----------------------------------------------------------------------------------


def search(
    db: Database,
    tenant: str,
    q: str,
    *,
    collection_id: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> list[Hit]:
    """The tenant's segments matching every word and phrase of ``q``, best first."""
    query = parse_query(q)
    limit = max(1, min(limit, MAX_HITS))
    with db.connect() as conn:
        docs = select(col(SearchDoc.config)).where(col(SearchDoc.tenant) == tenant)
        if collection_id is not None:
            docs = docs.where(col(SearchDoc.collection_id) == collection_id)
        configs = sorted(set(conn.execute(docs.distinct()).scalars()) & CONFIGS)
        if not configs:
            return []
        if conn.dialect.name == "postgresql":
            return _search_postgresql(conn, tenant, query, configs, collection_id, limit, offset)
        return _search_sqlite(conn, tenant, query, configs, collection_id, limit, offset)


def _tsquery(config: str, query: Query) -> Any:
    cfg = cast(literal(config), REGCONFIG_TYPE)
    parts = []
    if query.words:
        parts.append(func.plainto_tsquery(cfg, literal(" ".join(query.words))))
    parts += [func.phraseto_tsquery(cfg, literal(" ".join(p))) for p in query.phrases]
    combined: Any = parts[0]
    for part in parts[1:]:
        combined = combined.op("&&")(part)
    return combined


def _search_postgresql(
    conn: Connection,
    tenant: str,
    query: Query,
    configs: list[str],
    collection_id: str | None,
    limit: int,
    offset: int,
) -> list[Hit]:
    seg = SearchSegment
    # The column by name: its model type (Text with a TSVECTOR variant) does not build cache keys.
    tsv = literal_column("searchsegment.tsv", type_=TSVECTOR)
    # One branch per configuration in use, each with a constant tsquery: the GIN index serves each.
    matches = [(col(seg.config) == c) & tsv.op("@@")(_tsquery(c, query)) for c in configs]
    rank = (
        func.greatest(*[func.ts_rank(tsv, _tsquery(c, query)) for c in configs])
        if len(configs) > 1
        else (func.ts_rank(tsv, _tsquery(configs[0], query)))
    )
    stmt = (
        select(
            col(seg.id),
            col(seg.job_id),
            col(seg.segment),
            col(seg.start_s),
            col(seg.end_s),
            col(seg.config),
            col(seg.text),
        )
        .where(col(seg.tenant) == tenant, or_(*matches))
        .order_by(rank.desc(), col(seg.job_id), col(seg.segment))
        .limit(limit)
        .offset(offset)
    )
    if collection_id is not None:
        stmt = stmt.where(col(seg.collection_id) == collection_id)
    rows = conn.execute(stmt).all()
    options = f"StartSel={_OPEN}, StopSel={_CLOSE}, MaxWords={SNIPPET_WORDS}, MinWords=8, MaxFragments=2"
    snippets: dict[int, str] = {}
    for config in {r.config for r in rows}:
        ids = [r.id for r in rows if r.config == config]
        headline = func.ts_headline(
            cast(literal(config), REGCONFIG_TYPE), col(seg.text), _tsquery(config, query), literal(options)
        )
        for row_id, snip in conn.execute(select(col(seg.id), headline).where(col(seg.id).in_(ids))).all():
            snippets[row_id] = snip
    return [Hit(r.job_id, r.segment, r.start_s, r.end_s, _snippet(snippets.get(r.id, r.text))) for r in rows]


def _search_sqlite(
    conn: Connection,
    tenant: str,
    query: Query,
    configs: list[str],
    collection_id: str | None,
    limit: int,
    offset: int,
) -> list[Hit]:
    tables = sorted({fts_table(c) for c in configs})
    in_collection = " AND s.collection_id = :collection" if collection_id is not None else ""
    branches = [
        # Table names come from FTS_TABLES, never from the request; every value is a parameter.
        f"SELECT s.job_id AS job_id, s.segment AS segment, s.start_s AS start_s, s.end_s AS end_s, "
        f"snippet({table}, 0, :open, :close, '…', {SNIPPET_WORDS}) AS snip, bm25({table}) AS rank "
        f"FROM {table} JOIN searchsegment AS s ON s.id = {table}.rowid "
        f"WHERE {table} MATCH :match AND s.tenant = :tenant{in_collection}"
        for table in tables
    ]
    sql = " UNION ALL ".join(branches) + " ORDER BY rank, job_id, segment LIMIT :limit OFFSET :offset"
    params: dict[str, Any] = {
        "open": _OPEN,
        "close": _CLOSE,
        "match": query.fts5(),
        "tenant": tenant,
        "limit": limit,
        "offset": offset,
    }
    if collection_id is not None:
        params["collection"] = collection_id
    rows = conn.execute(text(sql), params).all()
    return [Hit(r.job_id, r.segment, r.start_s, r.end_s, _snippet(r.snip)) for r in rows]
