"""Recording length, per-tenant load, malformed options: refused before anything is stored or queued."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs.errors import InputError
from jobs.options import JobOptions
from jobs.runtime import Runtime
from tests.inprocess.conftest import RecordingDispatcher
from tests.speech import Recording
from workers import submission


def _client(rt: Runtime, tenant: str) -> httpx.Client:
    return TestClient(
        create_app(rt.settings, rt), headers={"Authorization": f"Bearer {create_key(rt.db, tenant)}"}
    )


def _upload(client: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    return client.post("/v1/jobs", files={"file": (path.name, path.read_bytes())}, data=fields)


def test_a_recording_over_the_longest_duration_is_refused_before_it_is_stored(
    make_runtime: Callable[..., Runtime], tones: Recording, dispatcher: RecordingDispatcher
) -> None:
    rt = make_runtime(max_duration_hours=0.01)  # 36 s; the tones last 154 s
    with _client(rt, "mallory") as client:
        answer = _upload(client, tones.path)
    assert answer.status_code == 422
    assert "VOXBATCH_MAX_DURATION_HOURS" in answer.json()["detail"]
    assert rt.store.list_jobs()[1] == 0
    assert not list(rt.storage.list("uploads/"))
    assert dispatcher.sent == []
    # The same limit holds for `submit` (CLI, drop folder): no job, nothing copied.
    with pytest.raises(InputError, match="VOXBATCH_MAX_DURATION_HOURS"):
        submission.submit(rt, str(tones.path), JobOptions())
    assert rt.store.list_jobs()[1] == 0
    assert not list(rt.storage.list("jobs/"))


def test_per_tenant_active_jobs_and_queued_hours_answer_429(
    make_runtime: Callable[..., Runtime], tones: Recording, dispatcher: RecordingDispatcher
) -> None:
    rt = make_runtime(max_active_jobs_per_tenant=2)
    with _client(rt, "mallory") as client:
        assert _upload(client, tones.path).status_code == 202
        assert _upload(client, tones.path).status_code == 202
        third = _upload(client, tones.path)
    assert third.status_code == 429
    assert int(third.headers["retry-after"]) >= 1
    with _client(rt, "alice") as client:  # another tenant is not affected
        assert _upload(client, tones.path).status_code == 202
    assert rt.store.list_jobs()[1] == 3

    rt2 = make_runtime(max_queued_hours_per_tenant=0.06)  # 216 s: one 154 s recording fits, not two
    with _client(rt2, "trudy") as client:
        assert _upload(client, tones.path).status_code == 202
        second = _upload(client, tones.path)
    assert second.status_code == 429
    assert "queued" in second.json()["detail"]


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://[::1]:99999/x", "ftp://example.com/", "http://127.0.0.1/"]
)
def test_a_bad_webhook_url_leaves_no_upload_behind(rt: Runtime, tones: Recording, url: str) -> None:
    with _client(rt, "mallory") as client:
        # after the file, too: the upload is deleted
        before = client.post(
            "/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}, data={"webhook_url": url}
        )
    assert before.status_code == 422, before.text
    assert not list(rt.storage.list("uploads/"))
    assert rt.store.list_jobs()[1] == 0
