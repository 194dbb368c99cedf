"""The finished job's player in headless Chromium: the recording streams with Range requests through a
signed link, the WebVTT file loads as the caption track (a malformed one fails to), clicking a
timestamp seeks, the segment being played is highlighted, progress shows segments beside windows.

The API runs in this process (uvicorn in a thread, SQLite, local storage) on a job made by hand in
the timed-transcript shape (tests/player.py), so the page is tested apart from the pipeline.
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.keys import create_key
from jobs.db import Database
from jobs.models import Job
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.storage import LocalStorage
from tests.browser.test_web_page import ARGS, CHROMIUM, shot
from tests.fixtures.services import free_port, wait_until
from tests.player import Segment, finished_job
from workers.audio import FfmpegAudio

playwright_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

DURATION_S = 40.0
SEGMENTS = [
    Segment(0.5, 8.0, "Welcome to the first segment."),
    Segment(9.0, 17.5, "The second segment talks about queues."),
    Segment(18.0, 29.0, "Third: <b>markup</b> stays text & so do ampersands."),
    Segment(30.0, 39.5, "The fourth and last segment."),
]


@dataclass
class LiveApi:
    url: str
    rt: Runtime

    def key(self, tenant: str) -> str:
        return create_key(self.rt.db, tenant)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s of a tone as MP3 (what people upload most)."""
    path = tmp_path_factory.mktemp("player") / "talk.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate=44100:duration={DURATION_S}", "-ac", "1", "-b:a", "64k", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    tmp = tmp_path_factory.mktemp("player-api")
    settings = Settings(data_dir=tmp / "data")
    db = Database(settings.resolved_database_url())
    db.migrate()

    def no_engine() -> Any:
        raise AssertionError("the player's tests run no engine")

    rt = Runtime(db=db, storage=LocalStorage(tmp / "store"), audio=FfmpegAudio(), settings=settings,
                 engine_factory=no_engine)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, rt), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start")
    yield LiveApi(f"http://127.0.0.1:{port}", rt)
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (infra/dev/system-packages.sh)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[*ARGS, "--mute-audio", "--autoplay-policy=no-user-gesture-required"],
            headless=True,
        )
        yield b
        b.close()


def open_job(browser: Any, live: LiveApi, tenant: str, job: Job) -> tuple[Any, list[str], list[Any]]:
    """A signed-in page with the job's document open; its page errors and media responses."""
    page = browser.new_page()
    errors: list[str] = []
    media: list[Any] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: media.append(r) if "/recording?" in r.url else None)
    page.goto(live.url + "/")
    page.fill("#api-key", live.key(tenant))
    page.click("#sign-in-form button")
    page.wait_for_selector(f"#job-rows tr[data-job-id='{job.id}'] button.read")
    page.click(f"#job-rows tr[data-job-id='{job.id}'] button.read")
    page.wait_for_selector("#document:not([hidden])")
    page.wait_for_selector("#player:not([hidden]) audio#media")
    return page, errors, media


TRACK = "document.querySelector('#media track')"


def test_the_player_loads_captions_seeks_and_follows_playback(
    browser: Any, live: LiveApi, recording: Path
) -> None:
    job = finished_job(live.rt, "pia", recording, SEGMENTS, duration_s=DURATION_S)
    page, errors, media = open_job(browser, live, "pia", job)

    # The caption track: loaded (readyState 2), one cue per segment, the same text.
    page.wait_for_function(f"() => {TRACK} && {TRACK}.readyState === 2", timeout=15_000)
    cues = page.evaluate(
        "() => Array.from(document.querySelector('#media').textTracks[0].cues)"
        ".map(c => [c.startTime, c.endTime, c.text])"
    )
    assert [(round(a, 3), round(b, 3), t) for a, b, t in cues] == [
        (g.start_s, g.end_s, g.text) for g in SEGMENTS
    ]
    track = page.evaluate(
        f"() => [{TRACK}.kind, {TRACK}.default, document.querySelector('#media').textTracks[0].kind]"
    )
    assert track == ["captions", True, "captions"]

    # The timed transcript: one row per segment, stamps as text, user text never parsed as HTML.
    stamps = page.locator("#segments .stamp").all_text_contents()
    assert stamps == ["00:00:00", "00:00:09", "00:00:18", "00:00:30"]
    assert page.locator("#segments li").nth(2).locator(".text").text_content() == SEGMENTS[2].text
    assert page.locator("#segments b").count() == 0

    # Clicking a timestamp seeks the player there and highlights that segment.
    page.wait_for_function("() => document.querySelector('#media').readyState >= 1", timeout=15_000)
    page.locator("#segments .stamp").nth(2).click()
    page.wait_for_function(
        "() => Math.abs(document.querySelector('#media').currentTime - 18) < 1.5", timeout=10_000
    )
    page.wait_for_selector("#segments li.current[data-index='2']")
    assert page.locator("#segments li.current").count() == 1
    shot(page, "10-player-seeked")

    # Playback carries on past the segment's end: the highlight moves on by itself (timeupdate).
    page.evaluate("() => { const m = document.querySelector('#media'); m.currentTime = 28.6; m.play(); }")
    page.wait_for_function("() => document.querySelector('#media').currentTime > 30.3", timeout=20_000)
    page.wait_for_selector("#segments li.current[data-index='3']", timeout=5_000)
    assert page.locator("#segments li.current").count() == 1
    assert page.get_attribute("#segments li[data-index='3']", "aria-current") == "true"
    # In the gap between segments nothing is highlighted.
    page.evaluate("() => { const m = document.querySelector('#media'); m.pause(); m.currentTime = 8.5; }")
    page.wait_for_function(
        "() => document.querySelectorAll('#segments li.current').length === 0", timeout=5_000
    )
    page.locator("#segments .stamp").nth(3).click()
    page.wait_for_selector("#segments li.current[data-index='3']")
    shot(page, "11-player-playing")

    # The browser streamed the recording through the signed link with Range requests.
    statuses = {r.status for r in media}
    assert 206 in statuses, [(r.status, r.url) for r in media]
    partial = next(r for r in media if r.status == 206)
    assert partial.all_headers()["content-range"].startswith("bytes ")
    assert partial.all_headers()["accept-ranges"] == "bytes"
    assert errors == []
    page.close()


def test_a_malformed_vtt_fails_to_load(browser: Any, live: LiveApi, recording: Path) -> None:
    broken = "NOT A WEBVTT FILE\n\n00:00.500 --> nonsense\nhello\n"
    job = finished_job(live.rt, "pia", recording, SEGMENTS, duration_s=DURATION_S, captions=broken)
    page, errors, _ = open_job(browser, live, "pia", job)
    page.wait_for_function(f"() => {TRACK} && {TRACK}.readyState === 3", timeout=15_000)  # ERROR
    assert page.evaluate("() => (document.querySelector('#media').textTracks[0].cues || []).length") == 0
    page.wait_for_selector("#player-status:has-text('captions could not be loaded')")
    shot(page, "12-player-broken-captions")
    assert errors == []
    page.close()


def test_range_requests_answer_206_over_http(live: LiveApi, recording: Path) -> None:
    job = finished_job(live.rt, "pia", recording, SEGMENTS, duration_s=DURATION_S)
    data = recording.read_bytes()
    key = live.key("pia")
    with httpx.Client(base_url=live.url, timeout=30) as anonymous:
        assert anonymous.get(f"/v1/jobs/{job.id}/recording").status_code == 401
        link = anonymous.post(f"/v1/jobs/{job.id}/recording/link", headers={"Authorization": f"Bearer {key}"})
        assert link.status_code == 200, link.text
        url = link.json()["recording_url"]
        part = anonymous.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        assert part.content == data[1000:2000]
        tail = anonymous.get(url, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == data[-100:]
        assert anonymous.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        head = anonymous.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        whole = anonymous.get(url)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-type"] == "audio/mpeg"
        captions = anonymous.get(link.json()["captions_url"])
        assert captions.status_code == 200 and captions.text.startswith("WEBVTT")
    with httpx.Client(base_url=live.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as keyed:
        assert keyed.get(f"/v1/jobs/{job.id}/recording", headers={"Range": "bytes=0-0"}).status_code == 206


def test_progress_shows_segments_beside_windows(browser: Any, live: LiveApi, recording: Path) -> None:
    """The job JSON's progress gains segments_done / segments_total (null until counted): the page
    shows them beside windows. The answer is patched in the browser until the API sends them."""
    job = finished_job(live.rt, "quinn", recording, SEGMENTS, duration_s=DURATION_S)
    page = browser.new_page()
    progress: Callable[[dict[str, Any]], dict[str, Any]] = lambda j: {  # noqa: E731
        **j["progress"],
        "windows_done": 1,
        "windows_total": 3,
        "segments_done": 41,
        "segments_total": 120,
    }

    def patch(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        for j in body["jobs"]:
            j["status"] = "transcribing"
            j["progress"] = progress(j)
        route.fulfill(response=answer, body=json.dumps(body))

    page.route("**/v1/jobs?limit=50", patch)
    page.goto(live.url + "/")
    page.fill("#api-key", live.key("quinn"))
    page.click("#sign-in-form button")
    row = page.locator(f"#job-rows tr[data-job-id='{job.id}']")
    row.wait_for()
    assert (row.locator(".windows").text_content() or "").strip() == "1/3"
    assert (row.locator(".segments").text_content() or "").strip() == "41/120"
    assert "windows" in (row.locator("td").nth(2).text_content() or "")
    assert row.locator("progress").evaluate("p => [p.value, p.max]") == [41, 120]
    shot(page, "13-progress-segments")
    page.close()


def test_a_search_hit_opens_the_player_at_its_second(browser: Any, live: LiveApi, recording: Path) -> None:
    from jobs import search

    job = finished_job(live.rt, "sam", recording, SEGMENTS, duration_s=DURATION_S)
    rows = [
        {"index": n, "start_s": g.start_s, "end_s": g.end_s, "text": g.text} for n, g in enumerate(SEGMENTS)
    ]
    search.index_job(live.rt.db, job.id, "sam", None, "en", rows)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live.url + "/")
    page.fill("#api-key", live.key("sam"))
    page.click("#sign-in-form button")
    page.wait_for_selector("#search-form")
    page.fill("#search-query", "markup ampersands")
    page.click("#search-form button")
    page.wait_for_selector("#search-hits li.hit")
    hit = page.locator("#search-hits li.hit")
    assert hit.count() == 1
    # The snippet's matches are <mark>s; the transcript's own markup stays text.
    assert hit.locator("mark").all_text_contents() == ["markup", "ampersands"]
    assert hit.locator("b").count() == 0 and "<b>" in (hit.text_content() or "")
    assert hit.locator(".when").text_content() == "00:00:18"
    shot(page, "12-search-hits")
    hit.click()
    page.wait_for_selector("#player:not([hidden]) audio#media")
    page.wait_for_function(
        "() => Math.abs(document.querySelector('#media').currentTime - 18) < 1.5", timeout=15_000
    )
    page.wait_for_selector("#segments li.current[data-index='2']")
    shot(page, "13-search-hit-opened")
    assert errors == []
    page.close()
