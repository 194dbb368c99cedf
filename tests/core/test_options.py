import pytest

from jobs.errors import InputError
from jobs.languages import check_language
from jobs.options import JobOptions, check_webhook_events, webhook_events_of
from jobs.presets import PRESETS, get_preset, overall_prompt, window_prompt
from jobs.settings import Settings


def test_presets_named_in_the_contract_exist() -> None:
    assert {"conference-talk", "panel", "meeting", "lecture", "voice-journal"} <= set(PRESETS)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(InputError, match="unknown preset 'podcast'; choose one of: conference-talk"):
        get_preset("podcast")


def test_instructions_go_after_the_preset_in_the_user_prompt() -> None:
    p = window_prompt(get_preset("panel"), "Name every speaker.", 2, "01:00:00 – 01:30:00")
    assert "part 3 (01:00:00 – 01:30:00) of a longer recording." in p
    assert p.index(get_preset("panel").window) < p.index("Name every speaker.")
    o = overall_prompt(get_preset("meeting"), "In French.", [("00:00:00 – 00:30:00", "a"), ("x", "b")])
    assert "In French." in o and o.index("[00:00:00 – 00:30:00]\na") < o.index("[x]\nb")


def test_languages() -> None:
    assert check_language("EN") == "en"
    assert check_language(None) is None
    assert check_language("auto") is None
    with pytest.raises(InputError, match="unknown language code 'xx'"):
        check_language("xx")


@pytest.mark.parametrize("minutes", [0, 0.5, 31, 45])
def test_window_minutes_never_above_thirty(minutes: float) -> None:
    with pytest.raises(InputError, match="between 1 and 30"):
        JobOptions(window_minutes=minutes).validated(Settings())


def test_defaults() -> None:
    opts = JobOptions(instructions="  ").validated(Settings())
    assert opts.preset == "conference-talk" and opts.window_minutes == 30 and opts.instructions is None


def test_priority_defaults_to_interactive_and_takes_batch() -> None:
    assert JobOptions().validated(Settings()).priority == "interactive"
    assert JobOptions(priority=" Batch ").validated(Settings()).priority == "batch"


def test_a_bad_priority_is_one_line_naming_the_choices() -> None:
    with pytest.raises(InputError, match=r"^priority must be interactive or batch, not 'urgent'$"):
        JobOptions(priority="urgent").validated(Settings())


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, None),
        ("", None),
        ("job.done", None),
        (" Window.Done ", "window.done"),
        ("job.done,window.done", "window.done,job.done"),
        (["window.done", "job.done"], "window.done,job.done"),
    ],
)
def test_webhook_events_are_stored_in_one_form(given: str | list[str] | None, stored: str | None) -> None:
    assert check_webhook_events(given) == stored
    assert webhook_events_of(stored) == (tuple(stored.split(",")) if stored else ("job.done",))


def test_unknown_webhook_events_are_refused_by_name() -> None:
    with pytest.raises(InputError, match=r"job\.started"):
        check_webhook_events("window.done,job.started")
