import json

import pytest

from jobs.documents import Document, render_json, render_markdown, render_text
from jobs.errors import PermanentError
from jobs.stitching import WindowResult, check_tiling, stitch
from jobs.timecodes import hms, span


def results() -> list[WindowResult]:
    return [
        WindowResult(0, 0.0, 1634.0, "  hello   world \n\n second line ", "first part"),
        WindowResult(1, 1634.0, 3400.0, "more words", None),
        WindowResult(2, 3400.0, 3412.5, "", None),
    ]


def test_hms_and_span() -> None:
    assert hms(0) == "00:00:00"
    assert hms(1634.4) == "00:27:14"
    assert hms(36000) == "10:00:00"
    assert span(1634, 3400) == "00:27:14 – 00:56:40"


def test_stitch_keeps_time_order_and_drops_empty_windows() -> None:
    shuffled = [results()[1], results()[2], results()[0]]
    assert stitch(shuffled) == "hello world\nsecond line\n\nmore words"


def test_tiling_accepts_contiguous_windows() -> None:
    check_tiling(results(), 3412.5)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ([WindowResult(0, 0, 10, "", None), WindowResult(1, 11, 20, "", None)], "starts at 11.00s"),
        ([WindowResult(0, 0, 10, "", None), WindowResult(2, 10, 20, "", None)], "window 1 is missing"),
        ([WindowResult(0, 0, 10, "", None)], "recording lasts 20.00s"),
    ],
)
def test_tiling_names_the_gap(broken: list[WindowResult], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        check_tiling(broken, 20.0)


def document(summary: str | None = "All of it.") -> Document:
    return Document(
        job_id="abc",
        source="/talks/keynote.mp3",
        title="keynote",
        duration_s=3412.5,
        language="en",
        engine="vllm",
        model="mistralai/Voxtral-Small-24B-2507",
        preset="conference-talk",
        instructions="for people who missed it",
        summary=summary,
        windows=results(),
    )


def test_json_has_the_contract_fields() -> None:
    data = json.loads(render_json(document()))
    for name in (
        "job_id",
        "source",
        "duration_s",
        "language",
        "engine",
        "model",
        "instructions",
        "summary",
        "transcript",
        "windows",
    ):
        assert name in data
    assert [w["index"] for w in data["windows"]] == [0, 1, 2]
    assert set(data["windows"][0]) >= {"index", "start_s", "end_s", "transcript", "summary"}
    assert data["transcript"] == "hello world\nsecond line\n\nmore words"


def test_markdown_has_title_summary_and_a_section_per_window() -> None:
    md = render_markdown(document()).decode()
    assert md.startswith("# keynote\n")
    assert md.index("## Summary") < md.index("All of it.") < md.index("## 00:00:00 – 00:27:14")
    assert "## 00:27:14 – 00:56:40" in md
    assert "## 00:56:40 – 00:56:52" in md
    assert "_No speech detected in this part._" in md
    assert "> Instructions: for people who missed it" in md


def test_text_is_the_transcript() -> None:
    assert render_text(document()).decode() == "hello world\nsecond line\n\nmore words\n"
