"""Live documents in process: a job's events derived from what is stored (order, resuming from any
event id, a finished job's replay), the events route through an ASGI client, partial documents."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs.events import Cursor, Event, next_events
from jobs.models import Window
from jobs.options import JobOptions, webhook_events_of
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.steps.local import run_local
from jobs.steps.segments import SegmentResult, segment_key
from jobs.stitching import WindowResult
from tests.speech import Recording


def _all_events(rt: Runtime, job_id: str, cursor: Cursor | None = None) -> list[Event]:
    """Every event after ``cursor`` that is stored now, in the batches a stream takes them."""
    out: list[Event] = []
    cursor = cursor or Cursor()
    while True:
        events, cursor, over = next_events(rt, rt.store.get(job_id), cursor, limit=3)
        out += events
        if over or not events:
            return out


def _sse(text: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "event" in fields:
            out.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
    return out


def test_a_finished_jobs_events_replay_its_document_in_order_and_resume_after_any_id(
    rt: Runtime, tones: Recording
) -> None:
    job = run_local(rt, create_job(rt, str(tones.path), JobOptions()).id)
    events = _all_events(rt, job.id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "status" and events[0].data["status"] == "succeeded"
    assert kinds[-1] == "document" and kinds.count("window") == 3
    doc = json.loads(rt.storage.get_bytes(f"jobs/{job.id}/output/document.json"))
    segments = [e.data for e in events if e.kind == "segment"]
    # The same segments as the document, in the same (recording) order, each window's summary
    # after its segments.
    assert [(s["window"], s["text"], s["start_s"]) for s in segments] == [
        (s["window"], s["text"], s["start_s"]) for s in doc["segments"]
    ]
    windows = [e.data for e in events if e.kind == "window"]
    assert [w["summary"] for w in windows] == [w["summary"] for w in doc["windows"]]
    assert len({e.id for e in events}) == len(events)  # every event has its own id
    for n, event in enumerate(events):
        # Reconnecting with any event's id gets exactly the events after it.
        assert _all_events(rt, job.id, Cursor.parse(event.id)) == events[n + 1 :]


def test_segments_answered_out_of_order_come_in_recording_order(rt: Runtime) -> None:
    job = create_job(rt, "talk.mp3", JobOptions())
    for index in range(2):
        rt.store.add_window(
            Window(job_id=job.id, index=index, start_s=60.0 * index, end_s=60.0 * (index + 1))
        )
    first, second = rt.store.windows(job.id)

    def answer(window: int, k: int) -> None:
        seg = SegmentResult(k, 60.0 * window + 10 * k, 60.0 * window + 10 * k + 9, f"w{window}s{k}")
        rt.storage.put_bytes(segment_key(job.id, window, k), seg.to_json())

    def texts(events: list[Event]) -> list[str]:
        return [str(e.data.get("text", e.kind)) for e in events if e.kind != "status"]

    answer(0, 2)  # the model answered segment 2 first, and window 1's first segment
    answer(1, 0)
    events, cursor, over = next_events(rt, rt.store.get(job.id), Cursor())
    assert texts(events) == [] and not over  # segment 0 of window 0 comes first
    answer(0, 0)
    events, cursor, _ = next_events(rt, rt.store.get(job.id), cursor)
    assert texts(events) == ["w0s0"]
    answer(0, 1)
    events, cursor, _ = next_events(rt, rt.store.get(job.id), cursor)
    assert texts(events) == ["w0s1", "w0s2"]
    # The window is done: its result is the truth, its summary comes after its segments, then
    # window 1's segments.
    result = WindowResult(
        0,
        0.0,
        60.0,
        "w0s0\nw0s1\nw0s2\nw0s3",
        "the first minute",
        segments=[
            {"index": k, "start_s": 10.0 * k, "end_s": 10.0 * k + 9, "text": f"w0s{k}", "speech": []}
            for k in range(4)
        ],
    )
    rt.storage.put_bytes(first.result_key, result.to_json())
    rt.store.finish_window(first.id, 1.0)
    events, cursor, _ = next_events(rt, rt.store.get(job.id), cursor)
    assert texts(events) == ["w0s3", "window", "w1s0"]
    assert events[-2].data == {"index": 0, "start_s": 0.0, "end_s": 60.0, "summary": "the first minute"}
    assert next_events(rt, rt.store.get(job.id), cursor)[0] == []  # nothing new: nothing sent
    assert second.index == 1


@pytest.fixture
def api(rt: Runtime) -> Callable[[str | None], httpx.Client]:
    app = create_app(rt.settings, rt)

    def client(key: str | None) -> httpx.Client:
        return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})

    return client


def test_the_events_route_replays_a_finished_job_and_resumes_from_last_event_id(
    rt: Runtime, tones: Recording, api: Callable[[str | None], httpx.Client]
) -> None:
    mine, theirs = create_key(rt.db, "alpha"), create_key(rt.db, "beta")
    job = run_local(rt, create_job(rt, str(tones.path), JobOptions(), tenant="alpha").id)
    with api(mine) as client:
        answer = client.get(f"/v1/jobs/{job.id}/events")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.text.startswith("retry: ")
        events = _sse(answer.text)
        assert events[-1]["event"] == "document"
        links = events[-1]["data"]["documents"]  # type: ignore[index]
        assert links["document.md"].endswith(f"/v1/jobs/{job.id}/documents/document.md")
        middle = len(events) // 2
        again = client.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": str(events[middle]["id"])})
        assert _sse(again.text) == events[middle + 1 :]
        bad = client.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": "1:2:nonsense"})
        assert bad.status_code == 422
        assert client.get("/v1/jobs/nope/events").status_code == 404
    with api(theirs) as client:
        assert client.get(f"/v1/jobs/{job.id}/events").status_code == 404
    with api(None) as client:
        assert client.get(f"/v1/jobs/{job.id}/events").status_code == 401


def test_partial_documents_render_what_is_done_and_say_so(
    rt: Runtime, api: Callable[[str | None], httpx.Client]
) -> None:
    key = create_key(rt.db, "alpha")
    job = create_job(rt, "talk.mp3", JobOptions(), tenant="alpha")
    for index in range(2):
        rt.store.add_window(
            Window(job_id=job.id, index=index, start_s=60.0 * index, end_s=60.0 * (index + 1))
        )
    for k in range(2):
        seg = SegmentResult(k, 12.0 + 10 * k, 20.0 + 10 * k, f"said-{k}")
        rt.storage.put_bytes(segment_key(job.id, 0, k), seg.to_json())
    with api(key) as client:
        base = f"/v1/jobs/{job.id}/documents"
        assert client.get(f"{base}/document.md").status_code == 409
        md = client.get(f"{base}/document.md", params={"partial": "true"})
        assert md.status_code == 200
        assert md.text.startswith("> **Partial document:")
        assert "[00:00:12] said-0" in md.text
        doc = client.get(f"{base}/document.json", params={"partial": "true"}).json()
        assert doc["partial"] is True
        assert [s["text"] for s in doc["segments"]] == ["said-0", "said-1"]
        for name in ("transcript.txt", "transcript.srt", "transcript.vtt"):
            answer = client.get(f"{base}/{name}", params={"partial": "true"})
            assert answer.status_code == 200 and "said-1" in answer.text, name


# --- webhook_events on `voxbatch submit`, checked as the API checks them --------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The steps submit would send to the broker (none is reachable here)."""
    from tests.inprocess.conftest import RecordingDispatcher

    dispatcher = RecordingDispatcher()
    monkeypatch.setattr("workers.dispatch.Dispatcher", lambda settings: dispatcher)
    return dispatcher.sent  # type: ignore[return-value]


def test_voxbatch_submit_takes_webhook_events_and_stores_them_as_the_api_does(
    make_runtime: Callable[..., Runtime],
    tones: Recording,
    sent: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from api.cli import cli

    rt = make_runtime(webhook_allow_private=True)
    monkeypatch.setattr("api.cli.common.get_settings", lambda: rt.settings)
    hook = "http://127.0.0.1:9/hook"
    done = CliRunner().invoke(
        cli, ["submit", str(tones.path), "--webhook-url", hook, "--webhook-events", "job.done, Window.Done"]
    )
    assert done.exit_code == 0, done.output
    job = rt.store.get(done.stdout.strip().splitlines()[-1])
    assert (job.webhook_url, job.webhook_events) == (hook, "window.done,job.done")
    assert webhook_events_of(job.webhook_events) == ("window.done", "job.done")  # as the API shows them
    plain = CliRunner().invoke(cli, ["submit", str(tones.path), "--webhook-url", hook])
    assert rt.store.get(plain.stdout.strip().splitlines()[-1]).webhook_events is None  # job.done only


@pytest.mark.parametrize("value", ["job.started", "window.done,everything", " , nope"])
def test_bad_webhook_events_are_refused_by_submit_in_the_apis_words(
    rt: Runtime, tones: Recording, sent: list[object], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from click.testing import CliRunner

    from api.cli import cli

    with TestClient(
        create_app(rt.settings, rt), headers={"Authorization": f"Bearer {create_key(rt.db, 'a')}"}
    ) as c:
        api = c.post(
            "/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}, data={"webhook_events": value}
        )
    assert api.status_code == 422, api.text
    monkeypatch.setattr("api.cli.common.get_settings", lambda: rt.settings)
    done = CliRunner().invoke(cli, ["submit", str(tones.path), "--webhook-events", value])
    assert done.exit_code == 2
    assert done.stderr.strip() == f"voxbatch: error: {api.json()['detail']}"
    assert "\n" not in api.json()["detail"] and rt.store.list_jobs()[1] == 0 and sent == []


def test_submit_refuses_a_webhook_url_the_api_would_refuse(
    rt: Runtime, tones: Recording, sent: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from api.cli import cli

    monkeypatch.setattr("api.cli.common.get_settings", lambda: rt.settings)
    done = CliRunner().invoke(cli, ["submit", str(tones.path), "--webhook-url", "http://127.0.0.1:9/hook"])
    assert done.exit_code == 2 and "private or reserved address" in done.stderr
    assert rt.store.list_jobs()[1] == 0 and sent == []


# --- open streams per tenant without Redis ---------------------------------------------------------


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:{port}/0", "memory://"])
def test_without_redis_the_stream_limit_counts_in_this_process(broker: str) -> None:
    from api.stream_slots import StreamSlots
    from jobs.errors import TooBusy
    from jobs.settings import Settings
    from tests.fixtures.services import free_port

    # Nothing answers at that port (or the broker is not Redis): the embedded single-process case.
    slots = StreamSlots.from_settings(
        Settings(broker_url=broker.format(port=free_port()), max_event_streams_per_tenant=2)
    )
    first, _ = slots.take("t"), slots.take("t")
    with pytest.raises(TooBusy, match="VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT"):
        slots.take("t")
    slots.take("other")  # another tenant has its own limit
    slots.give("t", first)
    slots.take("t")
    assert slots.open_streams("t") == 2 and slots.open_streams() == 3
