"""What the API says to strangers: metrics and readiness, echoed ids, HTML in documents, idempotency."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs.documents import Document, render_markdown
from jobs.runtime import Runtime
from jobs.stitching import WindowResult
from tests.inprocess.conftest import RecordingDispatcher
from tests.speech import Recording


def _app(rt: Runtime) -> TestClient:
    return TestClient(create_app(rt.settings, rt))


def test_metrics_need_the_operator_token(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(metrics_token="operator-secret-123")
    key = create_key(rt.db, "mallory")
    with _app(rt) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer operator-secret-123"})
        assert ok.status_code == 200 and "voxbatch_jobs" in ok.text
        assert client.get("/healthz").status_code == 200
    with _app(make_runtime()) as client:  # no token set: metrics are off
        assert client.get("/metrics").status_code == 401


def test_readyz_names_no_exception_text(rt: Runtime) -> None:
    rt.settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    with _app(rt) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["broker"] == "unreachable"
    assert "Error" not in answer.text and "127.0.0.1" not in answer.text


def test_long_ids_are_not_echoed(rt: Runtime) -> None:
    key = create_key(rt.db, "mallory")
    with TestClient(create_app(rt.settings, rt), headers={"Authorization": f"Bearer {key}"}) as client:
        for method, path in (
            ("GET", "/v1/jobs/" + "x" * 5000),
            ("GET", "/v1/jobs?status=" + "y" * 5000),
            ("GET", "/v1/jobs?limit=" + "9" * 5000),
            ("GET", "/v1/jobs/abc/documents/" + "z" * 5000),
            ("GET", "/" + "w" * 5000),
        ):
            answer = client.request(method, path)
            assert answer.status_code in (404, 422), path[:50]
            assert len(answer.text) < 600, (path[:50], answer.text[:200])


def test_markdown_escapes_html_from_names_and_instructions() -> None:
    doc = Document(
        job_id="j",
        source="<img src=x onerror=alert(1)>.mp3",
        title="<img src=x onerror=alert(1)>.mp3",
        duration_s=10.0,
        language="en",
        engine="fake",
        model="m",
        preset="conference-talk",
        instructions="<script>alert(1)</script>",
        summary="<b>s</b>",
        windows=[WindowResult(index=0, start_s=0.0, end_s=10.0, transcript="<i>t</i>", summary="<u>w</u>")],
    )
    text = render_markdown(doc).decode()
    for tag in ("<img", "<script>", "<i>", "<b>", "<u>"):
        assert tag not in text, text


def test_the_same_idempotency_key_makes_one_job(
    rt: Runtime, tones: Recording, dispatcher: RecordingDispatcher
) -> None:
    key = create_key(rt.db, "alice")
    app = create_app(rt.settings, rt)
    answers: list[httpx.Response] = []

    def upload() -> None:
        with TestClient(app, headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}) as c:
            answers.append(c.post("/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}))

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [a for a in answers if a.status_code == 202]
    assert created and all(a.status_code in (202, 409) for a in answers), [a.text for a in answers]
    upload()  # a retry after the others finished gets the same job
    ids = {a.json()["id"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    assert rt.store.list_jobs()[1] == 1
    with TestClient(app, headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}) as c:
        other = c.post("/v1/jobs", json={"source": "s3://elsewhere/x.mp3"})
    assert other.status_code == 422  # the same key with another body
    other_tenant = create_key(rt.db, "bob")
    with TestClient(app, headers={"Authorization": f"Bearer {other_tenant}", "Idempotency-Key": "k-1"}) as c:
        assert c.post("/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}).status_code == 202
    assert rt.store.list_jobs()[1] == 2
