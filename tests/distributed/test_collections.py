"""A collection on real workers and PostgreSQL: two talks submitted into it from the command line,
the proceedings built by the gpu worker's step after each reduce, searchable through PostgreSQL's
full-text index, fetched as a folder whose links work, then deleted."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from jobs import search
from jobs.models import JobStatus
from tests.distributed.conftest import Stack
from tests.fixtures.services import wait_until
from tests.speech import Recording


def test_a_collection_gets_proceedings_search_and_deletion(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    stack = stack_factory()
    c = stack.cluster
    c.start_worker("cpu", 2)
    c.start_worker("gpu", 2)
    made = c.cli("collection", "create", "DevConf", "--preset", "panel", "--language", "en")
    assert made.returncode == 0, made.stderr
    jobs = [
        c.submit(marker_recording.path, "--window-minutes", "1", "--collection", "DevConf", "--title", title)
        for title in ("Keynote", "Panel")
    ]
    for job_id in jobs:
        waited = c.wait(job_id, 180)
        assert waited.returncode == 0, (waited.stderr, c.logs())

    def shown() -> dict | None:
        done = c.cli("collection", "show", "DevConf", "--json")
        data = json.loads(done.stdout) if done.returncode == 0 else {}
        return data if len(data.get("documents", [])) == 3 else None

    wait_until(shown, 60, "the proceedings", 0.5)
    rt = c.runtime()

    def listed() -> list[str] | None:
        data = json.loads(c.cli("collection", "show", "DevConf", "--json").stdout)
        built = json.loads(rt.storage.get_bytes(f"collections/{data['id']}/collection.json"))
        titles = [t["title"] for t in built["talks"]]
        return titles if len(titles) == 2 else None

    assert sorted(wait_until(listed, 60, "both talks in the proceedings", 0.5)) == ["Keynote", "Panel"]

    out = tmp_path / "proceedings"
    fetched = c.cli("collection", "fetch", "DevConf", "--output-dir", str(out))
    assert fetched.returncode == 0, fetched.stderr
    page = (out / "index.html").read_text()
    for job_id in jobs:
        assert f'href="talks/{job_id}/document.md"' in page
        assert (out / "talks" / job_id / "document.md").read_text().startswith("# ")
        assert (out / "talks" / job_id / "transcript.vtt").exists()

    # Indexed by the reduce in PostgreSQL's English configuration (the collection's language).
    assert rt.db.engine.dialect.name == "postgresql"
    segments = json.loads((out / "talks" / jobs[0] / "document.json").read_text())["segments"]
    assert search.indexed(rt.db, jobs[0]) == len(segments)
    word = max(segments[0]["text"].split(), key=len).strip(".,;:!?")
    with rt.db.engine.connect() as conn:
        matched = conn.execute(
            text(
                "SELECT count(*) FROM searchsegment WHERE job_id = :j AND config = 'english' "
                "AND tsv @@ plainto_tsquery('english', :w)"
            ),
            {"j": jobs[0], "w": word},
        ).scalar_one()
    assert matched >= 1
    # The command line's jobs have no tenant: no tenant's search finds them.
    assert search.search(rt.db, "", word) == []

    deleted = c.cli("collection", "delete", "DevConf", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert all(rt.store.find(j) is None and search.indexed(rt.db, j) is None for j in jobs)
    assert list(rt.storage.list(f"jobs/{jobs[0]}/")) == []


def test_a_lost_proceedings_message_is_sent_again_by_the_sweep(
    stack_factory: Callable[..., Stack], marker_recording: Recording
) -> None:
    # The proceedings step's message is lost after the job succeeded (Redis lost its queue, or the
    # gpu worker that took it died): the sweep sees a succeeded job of a collection that no build
    # has listed, an empty gpu queue, and queues the step again through the outbox.
    import redis

    stack = stack_factory(VOXBATCH_WINDOW_LOST_AFTER_S="3", VOXBATCH_LEASE_SECONDS="8")
    c = stack.cluster
    broker = redis.Redis.from_url(stack.redis.url)
    assert c.cli("collection", "create", "DevConf").returncode == 0
    rt = c.runtime()
    # Each step on its own worker, stopped once its part is done, so the proceedings message waits
    # in the gpu queue with nobody to take it: one window (no overall summary step on the gpu).
    cpu = c.start_worker("cpu", 1)
    job_id = c.submit(marker_recording.path, "--window-minutes", "10", "--collection", "DevConf")
    wait_until(lambda: rt.store.get(job_id).status == JobStatus.transcribing, 60, "the split")
    c.signal_worker(cpu, signal.SIGTERM)
    cpu.process.wait(60)
    gpu = c.start_worker("gpu", 1)
    wait_until(lambda: rt.store.get(job_id).status == JobStatus.reducing, 60, "the window")
    c.signal_worker(gpu, signal.SIGTERM)
    gpu.process.wait(60)
    c.start_worker("cpu", 1)
    wait_until(lambda: rt.store.get(job_id).status == JobStatus.succeeded, 60, "the reduce")
    wait_until(lambda: broker.llen("gpu") == 1, 30, "the proceedings message")
    broker.delete("gpu")  # lost
    c.start_worker("gpu", 1)

    def listed() -> list[str] | None:
        key = f"collections/{rt.store.get(job_id).collection_id}/collection.json"
        if not rt.storage.exists(key):
            return None
        return [t["job_id"] for t in json.loads(rt.storage.get_bytes(key))["talks"]] or None

    assert wait_until(listed, 60, "the proceedings, sent again", 0.5) == [job_id], c.logs()
    assert "proceedings" in c.logs() and "sent again" in c.logs()
