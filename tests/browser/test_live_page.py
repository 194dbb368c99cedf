"""The page follows a running job in headless Chromium: the transcript grows from the event stream
while the model holds an answer of a later window, the recording plays and seeks at once, window
summaries appear as they are written, the stream broken by an API restart is reopened from the
last event, and the final document replaces the live view. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.stack import ApiStack
from tests.browser.test_web_page import browser, shot  # noqa: F401
from tests.fixtures.services import wait_until
from tests.speech import build_recording, marker_talk

# Markers no other test's recording carries: the stand-in holds the answers to this job's audio.
PAGE_MARKERS = [181, 182, 183, 184, 185, 186, 187, 188]
HELD = 188  # in the recording's second minute: its second window


def test_the_page_shows_the_transcript_growing_before_the_second_window_is_done(
    browser: Any,  # noqa: F811
    local_stack: ApiStack,
    audio_dir: Path,
) -> None:
    recording = build_recording(marker_talk(PAGE_MARKERS), audio_dir / "page-live.wav")
    local_stack.vllm.hold(frozenset({HELD}))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        with local_stack.client("petra") as client:
            job = client.post(
                "/v1/jobs",
                data={"window_minutes": "1"},
                files={"file": ("live-page.wav", recording.path.read_bytes())},
            ).json()
            page.goto(local_stack.url + "/")
            page.fill("#api-key", local_stack.key("petra"))
            page.click("#sign-in-form button")
            page.wait_for_selector(f"#job-rows tr[data-job-id='{job['id']}'] button.follow", timeout=30_000)
            page.click(f"#job-rows tr[data-job-id='{job['id']}'] button.follow")

            # The first window's words and its summary are on the page while the model holds an
            # answer of the second window: the job cannot be done.
            page.wait_for_selector("#segments li .text:has-text('marker-181')", timeout=60_000)
            page.wait_for_selector("#live-windows .window-summary[data-index='0']", timeout=60_000)
            now = client.get(f"/v1/jobs/{job['id']}").json()
            assert now["status"] != "succeeded" and now["progress"]["windows_done"] < 2
            assert local_stack.vllm.stats()["holding"] > 0
            assert page.locator("#live-windows .window-summary[data-index='1']").count() == 0
            shot(page, "10-live-first-window")

            # The recording plays and seeks at once.
            page.wait_for_function("() => document.querySelector('#media').readyState >= 1", timeout=15_000)
            start = float(page.get_attribute("#segments li[data-index='1'] .stamp", "data-start") or "nan")
            page.locator("#segments li[data-index='1'] .stamp").click()
            page.wait_for_function(
                f"() => Math.abs(document.querySelector('#media').currentTime - {start}) < 1.5"
            )

            # The API restarts: the stream breaks, and the page opens it again by itself, from the
            # last event it saw, on the new process.
            local_stack.stop_api()
            page.wait_for_selector("#live-status[data-reconnecting='true']", timeout=60_000)
            local_stack.start_api()
            local_stack.vllm.release()

            # The second window, then the final document in place of the live view.
            page.wait_for_selector("#document-body h1", timeout=120_000)
            final = client.get(f"/v1/jobs/{job['id']}").json()
            assert final["status"] == "succeeded"
            doc = client.get(f"/v1/jobs/{job['id']}/documents/document.json").json()
        said = page.locator("#segments .text").all_text_contents()
        assert said == [s["text"] for s in doc["segments"]]  # nothing lost or shown twice
        shot(page, "11-live-done")
        wait_until(lambda: page.locator("#media").count() == 1, 10, "the player")
        assert errors == []
    finally:
        local_stack.vllm.release()
        page.close()
