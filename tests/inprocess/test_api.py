"""The API's authentication and validation, in process (an ASGI client, no server, no broker)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs.limits import MAX_INSTRUCTIONS_CHARS
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job


@pytest.fixture
def api(rt: Runtime) -> Callable[[str | None], httpx.Client]:
    app = create_app(rt.settings, rt)

    def client(key: str | None) -> httpx.Client:
        # Starlette's TestClient drives the ASGI app in this process, through httpx's interface.
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(app, headers=headers)

    return client


@pytest.mark.parametrize("key", [None, "vbk_nope_nope", "x" * 5000])
def test_no_or_unknown_key_is_401(api: Callable[[str | None], httpx.Client], key: str | None) -> None:
    with api(key) as client:
        answer = client.get("/v1/jobs")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_jobs_of_other_tenants_are_not_found(api: Callable[[str | None], httpx.Client], rt: Runtime) -> None:
    mine, theirs = create_key(rt.db, "alpha"), create_key(rt.db, "beta")
    job = create_job(rt, "talk.mp3", JobOptions(), tenant="beta")
    with api(mine) as client:
        assert client.get("/v1/jobs").json()["total"] == 0
        for method, path in (
            ("GET", f"/v1/jobs/{job.id}"),
            ("GET", f"/v1/jobs/{job.id}/documents/document.md"),
            ("POST", f"/v1/jobs/{job.id}/cancel"),
            ("POST", f"/v1/jobs/{job.id}/retry"),
        ):
            assert client.request(method, path).status_code == 404, path
    with api(theirs) as client:
        assert client.get("/v1/jobs").json()["total"] == 1
        assert client.get(f"/v1/jobs/{job.id}/documents/document.md").status_code == 409
        assert client.get(f"/v1/jobs/{job.id}/documents/secrets.txt").status_code == 404
    assert rt.store.get(job.id).status == "queued"  # nothing the other tenant sent changed it


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"source": "s3://b/k", "window_minutes": 45}, "window"),
        ({"source": "s3://b/k", "instructions": "x" * (MAX_INSTRUCTIONS_CHARS + 1)}, "instructions"),
        ({"source": "s3://b/k", "preset": "sonnet"}, "preset"),
        ({"source": "s3://b/k", "language": "klingon"}, "language"),
        ({}, "exactly one"),
        ({"source": "/etc/passwd"}, "s3://"),
    ],
)
def test_bad_options_are_422_with_a_reason(
    api: Callable[[str | None], httpx.Client], rt: Runtime, body: dict[str, object], detail: str
) -> None:
    with api(create_key(rt.db, "alpha")) as client:
        answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 422, answer.text
    assert detail in answer.json()["detail"]
    assert rt.store.list_jobs()[1] == 0


def test_an_upload_that_is_not_audio_is_422_and_leaves_nothing(
    api: Callable[[str | None], httpx.Client], rt: Runtime
) -> None:
    with api(create_key(rt.db, "alpha")) as client:
        answer = client.post("/v1/jobs", files={"file": ("notes.mp3", b"this is not audio" * 100)})
        unsupported = client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"})
    assert answer.status_code == 422 and "notes.mp3" in answer.json()["detail"]
    assert unsupported.status_code == 415
    assert list(rt.storage.list("uploads/")) == []
    assert rt.store.list_jobs()[1] == 0
