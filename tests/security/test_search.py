"""GET /v1/search over HTTP: one tenant's search never sees another tenant's transcripts nor its
collections, and a query is words, never SQL or FTS5 syntax (bound parameters only); queries are
length-limited. The API runs on a loopback socket (tests/security/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobs import collections, search
from jobs.models import JobStatus
from jobs.options import JobOptions
from jobs.steps.create import create_job
from jobs.steps.local import run_local
from tests.security.conftest import LiveApi
from tests.speech import Recording


def _get(api: LiveApi, key: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{api.url}/v1/search", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture
def two_tenants(
    live_api: Callable[..., LiveApi], tones: Recording
) -> tuple[LiveApi, str, str, dict[str, str]]:
    api = live_api()
    acme, bolt = api.key("acme"), api.key("bolt")
    jobs = {}
    for tenant in ("acme", "bolt"):
        job = run_local(api.rt, create_job(api.rt, str(tones.path), JobOptions(), tenant=tenant).id)
        assert job.status == JobStatus.succeeded
        jobs[tenant] = job.id
    # A transcript only bolt has (indexed as the reduce indexes: jobs.search.index_job).
    secret = [{"index": 0, "start_s": 1.0, "end_s": 2.0, "text": "the merger with Initech closes in May"}]
    search.index_job(api.rt.db, "boltsecret", "bolt", None, "en", secret)
    return api, acme, bolt, jobs


def test_a_tenant_finds_only_its_own_transcripts(
    two_tenants: tuple[LiveApi, str, str, dict[str, str]],
) -> None:
    api, acme, bolt, jobs = two_tenants
    # Both finished jobs heard the same markers: each tenant sees its own job only.
    mine = _get(api, acme, q="marker")
    assert mine.status_code == 200, mine.text
    assert {h["job_id"] for h in mine.json()["hits"]} == {jobs["acme"]}
    theirs = _get(api, bolt, q="marker")
    assert {h["job_id"] for h in theirs.json()["hits"]} == {jobs["bolt"]}
    hit = mine.json()["hits"][0]
    assert set(hit) == {"job_id", "segment", "start_s", "end_s", "snippet"} and "<mark>" in hit["snippet"]
    assert _get(api, bolt, q="Initech merger").json()["hits"][0]["job_id"] == "boltsecret"
    assert _get(api, acme, q="Initech merger").json()["hits"] == []


def test_another_tenants_collection_is_not_found(live_api: Callable[..., LiveApi]) -> None:
    api = live_api()
    acme, bolt = api.key("acme"), api.key("bolt")
    theirs = collections.create(api.rt.db, "bolt", "Board 2027", JobOptions())
    search.index_job(
        api.rt.db, "b1", "bolt", theirs.id, "en", [{"index": 0, "start_s": 0, "end_s": 1, "text": "budget"}]
    )
    for ref in (theirs.id, theirs.name):
        answer = _get(api, acme, q="budget", collection=ref)
        assert answer.status_code == 404
        assert _get(api, bolt, q="budget", collection=ref).json()["hits"][0]["job_id"] == "b1"


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE searchsegment; --",
        "x' OR '1'='1",
        'marker" OR tenant:bolt OR "',
        "text:Initech",
        "NEAR(merger Initech, 2)",
        "{text}: Initech",
        "Initech*",
        "marker) UNION SELECT job_id, 0, 0, 0, text, 0 FROM searchsegment --",
        "!!:* & | <-> ''",
        "\x00\x01 marker",
    ],
)
def test_queries_are_words_never_syntax(
    two_tenants: tuple[LiveApi, str, str, dict[str, str]], query: str
) -> None:
    api, acme, _, jobs = two_tenants
    answer = _get(api, acme, q=query)
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 200:
        assert {h["job_id"] for h in answer.json()["hits"]} <= {jobs["acme"]}
    # Nothing was dropped or changed: the index still answers as before.
    assert {h["job_id"] for h in _get(api, acme, q="marker").json()["hits"]} == {jobs["acme"]}


def test_queries_are_length_limited(live_api: Callable[..., LiveApi]) -> None:
    api = live_api()
    key = api.key("acme")
    assert _get(api, key, q="a" * (search.MAX_QUERY_CHARS + 1)).status_code == 422
    too_many = " ".join(f"w{n}" for n in range(search.MAX_QUERY_TERMS + 1))
    assert _get(api, key, q=too_many).status_code == 422
    assert _get(api, key, q="").status_code == 422
    assert httpx.get(f"{api.url}/v1/search", params={"q": "x"}, timeout=30).status_code == 401


def test_the_reduce_indexes_and_delete_removes(
    two_tenants: tuple[LiveApi, str, str, dict[str, str]], tmp_path: Path
) -> None:
    api, acme, _, jobs = two_tenants
    job_id = jobs["acme"]
    assert search.indexed(api.rt.db, job_id)
    gone = httpx.delete(
        f"{api.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {acme}"}, timeout=30
    )
    assert gone.status_code == 204
    assert _get(api, acme, q="marker").json()["hits"] == []
    assert search.indexed(api.rt.db, job_id) is None


def test_another_tenants_job_cannot_be_deleted_and_a_drop_folder_source_is_kept(
    two_tenants: tuple[LiveApi, str, str, dict[str, str]],
) -> None:
    api, acme, bolt, jobs = two_tenants
    theirs = httpx.delete(
        f"{api.url}/v1/jobs/{jobs['bolt']}", headers={"Authorization": f"Bearer {acme}"}, timeout=30
    )
    assert theirs.status_code == 404
    assert api.rt.store.find(jobs["bolt"]) is not None and search.indexed(api.rt.db, jobs["bolt"])
    # A drop-folder job's recording is the inbox's object: only the job's own keys go.
    api.rt.storage.put_bytes("inbox/team/board.mp3", b"the drop folder's recording")
    api.rt.store.update(jobs["bolt"], source="s3://drop/inbox/team/board.mp3", source_key=None)
    mine = httpx.delete(
        f"{api.url}/v1/jobs/{jobs['bolt']}", headers={"Authorization": f"Bearer {bolt}"}, timeout=30
    )
    assert mine.status_code == 204
    assert api.rt.storage.get_bytes("inbox/team/board.mp3") == b"the drop folder's recording"
    assert list(api.rt.storage.list(f"jobs/{jobs['bolt']}/")) == []
