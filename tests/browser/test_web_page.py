"""The web page in headless Chromium (Debian's), driven by Playwright: sign in, drop a recording,
watch the upload and the job's progress, read and download the document. Screenshots of each
state go to test-artifacts/browser/."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.stack import ApiStack
from tests.speech import Recording

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (infra/dev/system-packages.sh)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def drop_file(page: Any, selector: str, path: Path, name: str) -> None:
    """A real drop event carrying the file, as a user dragging it from their desktop."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "audio/mpeg" }));
            return dt;
        }""",
        [data, name],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_upload_follow_and_read_a_document(
    browser: Any, local_stack: ApiStack, marker_recording_mp3: Recording, tmp_path: Path
) -> None:
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(local_stack.url + "/")
    page.fill("#api-key", "vbk_wrong_key")
    page.click("#sign-in-form button")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    shot(page, "01-sign-in-refused")

    page.fill("#api-key", local_stack.key("dora"))
    page.click("#sign-in-form button")
    page.wait_for_selector("#app:not([hidden])")
    shot(page, "02-signed-in")

    hostile = "<img src=x onerror=alert(1)> talk.mp3"
    drop_file(page, "#drop", marker_recording_mp3.path, hostile)
    assert "talk.mp3" in page.text_content("#file-name")
    page.select_option("#preset", "lecture")
    page.fill("#instructions", "List every marker.")
    shot(page, "03-file-dropped")
    page.click("#start")
    page.wait_for_selector("#upload-status:has-text('queued')", timeout=30_000)
    assert page.eval_on_selector("#upload-progress", "e => e.value") == 100
    shot(page, "04-uploaded")

    row = page.locator("#job-rows tr").first
    assert row.locator("td").first.text_content() == hostile  # shown as text, not markup
    assert page.locator("#job-rows img").count() == 0
    page.wait_for_selector("#job-rows tr[data-status='transcribing'], #job-rows tr[data-status='succeeded']",
                           timeout=60_000)  # fmt: skip
    shot(page, "05-in-progress")
    page.wait_for_selector("#job-rows tr[data-status='succeeded']", timeout=120_000)
    windows = row.locator(".windows").text_content() or ""
    done, total = windows.strip().split("/")
    assert done == total and int(total) >= 1
    shot(page, "06-succeeded")

    row.locator("button.read").click()
    page.wait_for_selector("#document:not([hidden])")
    body = page.text_content("#document-body") or ""
    assert "marker-0" in body and "marker-11" in body
    assert page.locator("#document-body h1, #document-body h2").count() >= 1
    assert "/api/tasks?search=" in (page.get_attribute("#flower-link", "href") or "")
    shot(page, "07-document")

    # The player: the recording through a signed link, the pipeline's transcript.vtt as its captions
    # (a file Chromium cannot parse leaves the track in readyState 3 and fails here).
    track = "document.querySelector('#media track')"
    page.wait_for_function(f"() => {track} && {track}.readyState === 2", timeout=15_000)
    cues = page.evaluate(
        "() => Array.from(document.querySelector('#media').textTracks[0].cues).map(c => c.text)"
    )
    heard = [w for w in " ".join(cues).split() if w.startswith("marker-")]
    assert heard == [f"marker-{k}" for k in range(12)], cues
    said = [
        w
        for w in " ".join(page.locator("#segments .text").all_text_contents()).split()
        if w.startswith("marker-")
    ]
    assert said == [f"marker-{k}" for k in range(12)]
    assert page.locator("#segments .stamp").count() >= 3
    start = float(page.get_attribute("#segments li[data-index='2'] .stamp", "data-start") or "nan")
    page.wait_for_function("() => document.querySelector('#media').readyState >= 1", timeout=15_000)
    page.locator("#segments .stamp").nth(2).click()
    page.wait_for_function(f"() => Math.abs(document.querySelector('#media').currentTime - {start}) < 1.5")
    page.wait_for_selector("#segments li.current[data-index='2']")
    shot(page, "08-player")

    with page.expect_download() as info:
        page.click("#download-md")
    saved = tmp_path / "document.md"
    info.value.save_as(saved)
    assert "marker-0" in saved.read_text()
    assert errors == []
    page.close()


def test_several_recordings_chosen_at_once_join_one_new_collection(
    browser: Any, local_stack: ApiStack, short_speech: Path, tmp_path: Path
) -> None:
    names = ["keynote.wav", "panel.wav", "closing.wav"]
    files = []
    for name in names:
        shutil.copyfile(short_speech, tmp_path / name)
        files.append(str(tmp_path / name))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(local_stack.url + "/")
    page.fill("#api-key", local_stack.key("erin"))
    page.click("#sign-in-form button")
    page.wait_for_selector("#app:not([hidden])")

    page.set_input_files("#file", files)  # the file chooser, three files picked together
    assert page.text_content("#file-name", timeout=5_000).startswith("3 recordings")  # type: ignore[union-attr]
    page.fill("#collection", "DevConf 2027")  # a new name: the page makes the collection
    page.select_option("#preset", "panel")
    page.click("#start")
    page.wait_for_selector("#upload-status:has-text('3/3 Uploaded')", timeout=60_000)
    page.wait_for_selector("#search-collection option:has-text('DevConf 2027')", state="attached")
    shot(page, "09-collection-uploaded")

    with local_stack.client("erin") as client:
        shown = client.get("/v1/collections/DevConf 2027")
        assert shown.status_code == 200, shown.text
        jobs = shown.json()["jobs"]
        assert sorted(j["source_name"] for j in jobs) == sorted(names)
        assert {(j["collection_id"], j["preset"]) for j in jobs} == {(shown.json()["id"], "panel")}
        # Nothing outside it: every job the tenant has is in the collection.
        listed = client.get("/v1/jobs").json()["jobs"]
        assert sorted(j["id"] for j in listed) == sorted(j["id"] for j in jobs)
    page.wait_for_function("() => document.querySelectorAll('#job-rows tr').length === 3")
    assert errors == []
    page.close()
