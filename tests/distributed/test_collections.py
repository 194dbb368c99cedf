"""A collection on real workers and PostgreSQL: two talks submitted into it from the command line,
the proceedings built by the gpu worker's step after each reduce, searchable through PostgreSQL's
full-text index, fetched as a folder whose links work, then deleted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from jobs import search
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
