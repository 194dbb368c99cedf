"""The full-text index on both databases: the job's language decides stemming, words and phrases
match, hits are one tenant's (and one collection's when asked), snippets are escaped with the
matches marked, and a job's rows leave the index with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import search
from jobs.db import Database
from jobs.errors import InputError
from jobs.settings import Settings
from tests.fixtures.services import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'v.db'}"
    else:
        postgres: Postgres = request.getfixturevalue("postgres")
        url = Settings(database_url=postgres.fresh_database_url()).resolved_database_url()
    database = Database(url)
    database.migrate()
    return database


def _segments(*texts: str) -> list[dict[str, object]]:
    return [
        {"index": n, "start_s": 10.0 * n, "end_s": 10.0 * n + 9.5, "text": t} for n, t in enumerate(texts)
    ]


def test_words_and_phrases_match_with_the_jobs_language(db: Database) -> None:
    search.index_job(
        db,
        "en1",
        "acme",
        None,
        "en",
        _segments("We start with the agenda.", "Offloading the KV-cache to host memory helps long contexts."),
    )
    search.index_job(db, "fr1", "acme", None, "fr", _segments("Les chevaux mangent de l'herbe."))
    hits = search.search(db, "acme", "offloaded")  # English stemming: offloaded ~ offloading
    assert [(h.job_id, h.segment, h.start_s, h.end_s) for h in hits] == [("en1", 1, 10.0, 19.5)]
    assert "<mark>Offloading</mark>" in hits[0].snippet
    assert [h.segment for h in search.search(db, "acme", '"host memory"')] == [1]
    assert search.search(db, "acme", '"memory host"') == []
    assert search.search(db, "acme", "offloading agenda") == []  # every word, in one segment
    assert [h.job_id for h in search.search(db, "acme", "chevaux")] == ["fr1"]


def test_a_tenant_sees_only_its_own_transcripts_and_a_collection_only_its_jobs(db: Database) -> None:
    search.index_job(db, "a1", "acme", "c-acme", "en", _segments("quarterly revenue grew"))
    search.index_job(db, "a2", "acme", None, "en", _segments("revenue was flat"))
    search.index_job(db, "b1", "bolt", None, "en", _segments("secret revenue numbers"))
    assert sorted(h.job_id for h in search.search(db, "acme", "revenue")) == ["a1", "a2"]
    assert [h.job_id for h in search.search(db, "acme", "revenue", collection_id="c-acme")] == ["a1"]
    assert [h.job_id for h in search.search(db, "bolt", "revenue")] == ["b1"]
    assert search.search(db, "acme", "secret") == []
    assert search.search(db, "nobody", "revenue") == []


def test_snippets_are_escaped_and_a_reindex_or_unindex_leaves_no_copies(db: Database) -> None:
    search.index_job(
        db, "x1", "acme", None, None, _segments("<script>alert(1)</script> pipeline \ue000x\ue001")
    )
    (hit,) = search.search(db, "acme", "pipeline")
    # Escaped (SQLite) or dropped as markup by PostgreSQL's parser: never live HTML.
    assert "<" not in hit.snippet.replace("<mark>", "").replace("</mark>", "")
    assert hit.snippet.count("<mark>") == 1 and "\ue000" not in hit.snippet
    search.index_job(db, "x1", "acme", None, None, _segments("pipeline again", "and pipeline"))
    assert sorted(h.segment for h in search.search(db, "acme", "pipeline")) == [0, 1]
    assert search.indexed(db, "x1") == 2
    search.unindex_job(db, "x1")
    assert search.search(db, "acme", "pipeline") == [] and search.indexed(db, "x1") is None


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE searchsegment; --",
        'revenue" OR "secret',
        "text:secret",
        "NEAR(revenue secret)",
        "revenue*",
        "\\x00 ) ( & | ! <-> :*",
    ],
)
def test_query_syntax_is_words_only(db: Database, query: str) -> None:
    search.index_job(db, "a1", "acme", None, "en", _segments("revenue grew"))
    search.index_job(db, "b1", "bolt", None, "en", _segments("secret revenue"))
    try:
        hits = search.search(db, "acme", query)
    except InputError:
        hits = []
    assert {h.job_id for h in hits} <= {"a1"}
    assert search.indexed(db, "a1") == 1  # the table is still there


def test_queries_are_length_limited() -> None:
    with pytest.raises(InputError, match="longer than"):
        search.parse_query("a" * (search.MAX_QUERY_CHARS + 1))
    with pytest.raises(InputError, match="more than"):
        search.parse_query(" ".join(f"w{n}" for n in range(search.MAX_QUERY_TERMS + 1)))
    with pytest.raises(InputError, match="no words"):
        search.parse_query(' " ! " ')
