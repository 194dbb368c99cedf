"""The stand-in's GPU model (tests/standins/gpu_model.py): its arithmetic, by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tests.standins.gpu_model import (
    BatchEngine,
    GpuFigures,
    GpuModel,
    GpuRequest,
    audio_tokens,
    compare_windows_and_segments,
)

# Round figures so every expected time is easy to compute by hand.
PLAIN = GpuFigures(
    prefill_s_per_token=0.001,
    step_fixed_s=0.03,
    step_per_seq_s=0.001,
    step_per_context_token_s=0.0,
    tokens_per_speech_s=2.5,
    max_sequences=4,
    prompt_overhead_tokens=0,
    max_batched_tokens=None,  # whole prefills between steps: the arithmetic below
)


@pytest.mark.parametrize(
    ("seconds", "tokens"),
    [(0.0, 0), (0.5, 375), (30.0, 375), (30.01, 750), (1800.0, 22_500), (1801.0, 22_875), (2400.0, 30_000)],
)
def test_audio_is_padded_to_thirty_seconds(seconds: float, tokens: int) -> None:
    assert audio_tokens(seconds) == tokens


def test_default_figures_match_the_issue() -> None:
    model = GpuModel()
    window = GpuRequest(1800.0)
    assert model.prefill_s(window) == pytest.approx(2.4, rel=0.01)
    assert model.step_s(1) == pytest.approx(0.031, rel=0.01)
    assert model.output_tokens(window) == 4500
    assert model.output_tokens(GpuRequest(30.0, speech_s=10.0)) == 25


def test_per_request_arithmetic() -> None:
    model = GpuModel(PLAIN)
    r = GpuRequest(20.0, speech_s=4.0, text_tokens=10)
    assert model.prompt_tokens(r) == 385
    assert model.output_tokens(r) == 10
    assert model.prefill_s(r) == pytest.approx(0.385)
    assert model.step_s(3) == pytest.approx(0.033)
    assert model.alone_s(r) == pytest.approx(0.385 + 10 * 0.031)
    assert model.output_tokens(GpuRequest(0.0, output_tokens=0)) == 1


def test_context_cost_grows_with_every_step() -> None:
    model = GpuModel(GpuFigures(step_fixed_s=0.0, step_per_seq_s=0.0, step_per_context_token_s=1.0))
    # 3 steps of 2 sequences from 100 tokens: 100 + 102 + 104.
    assert model.steps_s(3, 2, 100) == pytest.approx(306.0)


def test_batching_shares_the_steps() -> None:
    model = GpuModel(PLAIN)
    requests = [GpuRequest(30.0, output_tokens=100) for _ in range(4)]
    # Four prefills (0.375 s each), then 100 steps of 4 sequences (0.034 s each).
    assert model.ideal_s(requests) == pytest.approx(4 * 0.375 + 100 * 0.034)
    assert model.ideal_s(requests[:1]) == pytest.approx(model.alone_s(requests[0]))


def test_the_one_job_ideal_sends_the_overall_summary_after_the_window_summaries() -> None:
    model = GpuModel(PLAIN)
    window_summary = GpuRequest(30.0, output_tokens=100)
    overall = GpuRequest(0.0, text_tokens=200, output_tokens=100)
    requests = [window_summary, window_summary, overall]
    # Without the dependency all three share the steps; with it the overall's prefill and its
    # 100 steps (at batch 1) follow the windows' summaries.
    chained = model.ideal_s(requests[:2]) + model.alone_s(overall)
    assert model.ideal_one_job_s(requests) == pytest.approx(chained)
    assert model.ideal_one_job_s(requests) > model.ideal_s(requests)
    assert model.ideal_one_job_s(requests[:2]) == pytest.approx(model.ideal_s(requests[:2]))


def test_the_jobs_ideal_waits_for_each_jobs_own_window_summaries() -> None:
    model = GpuModel(PLAIN)
    short = GpuRequest(30.0, output_tokens=10)
    long = GpuRequest(30.0, output_tokens=100)
    overall = GpuRequest(0.0, text_tokens=200, output_tokens=10)
    # The short job's overall summary goes once its own summary is answered, beside the long
    # one's steps; the one-job ideal of both together makes it wait for the long summary too.
    jobs = [[short, overall], [long]]
    both = model.ideal_jobs_s(jobs)
    assert model.ideal_s([short, long]) < both < model.ideal_one_job_s([short, overall, long])
    assert model.ideal_jobs_s([[short, overall]]) == pytest.approx(model.ideal_one_job_s([short, overall]))


def test_summaries_first_start_the_chain_before_the_segments() -> None:
    model = GpuModel(PLAIN)  # 4 sequences at most
    segments = [GpuRequest(30.0)] * 8  # a transcription: its answer follows its speech
    summary = GpuRequest(30.0, output_tokens=100)
    overall = GpuRequest(0.0, text_tokens=200, output_tokens=100)
    job = [*segments, summary, overall]
    # In order the summary is admitted after the segments and its 100 steps start late.
    assert model.ideal_jobs_s([job], summaries_first=True) < model.ideal_jobs_s([job])


def test_the_cap_makes_requests_wait_and_slots_are_refilled_between_steps() -> None:
    model = GpuModel(PLAIN)
    short = GpuRequest(30.0, output_tokens=10)
    long = GpuRequest(30.0, output_tokens=50)
    engine = BatchEngine(model)
    for key, r in enumerate([long, long, long, short, short]):
        engine.submit(key, r, at=0.0)
    engine.run_until(math.inf)
    # 4 prefills, 10 steps of 4, the short one leaves; the fifth is prefilled; 10 steps of 4,
    # it leaves; 30 steps of the 3 long ones.
    t_short = 4 * 0.375 + 10 * 0.034
    assert engine.finished[3] == pytest.approx(t_short)
    assert engine.finished[4] == pytest.approx(t_short + 0.375 + 10 * 0.034)
    assert engine.finished[0] == pytest.approx(t_short + 0.375 + 10 * 0.034 + 30 * 0.033)
    assert engine.max_active == 4
    assert engine.steps == 50
    assert engine.t == pytest.approx(engine.busy_s)


def test_late_arrivals_leave_the_gpu_idle_and_join_at_a_step_boundary() -> None:
    model = GpuModel(PLAIN)
    engine = BatchEngine(model)
    engine.submit("a", GpuRequest(30.0, output_tokens=100), at=0.0)
    done = engine.run_until(1.0)
    assert done == []
    assert 1.0 <= engine.t < 1.0 + 0.031 + 1e-9  # the step in progress at 1.0 completes
    engine.submit("b", GpuRequest(30.0, output_tokens=10), at=1.0)
    engine.run_until(math.inf)
    steps_before = math.ceil((1.0 - 0.375) / 0.031)
    t_b = 0.375 + steps_before * 0.031 + 0.375 + 10 * 0.032
    assert engine.finished["b"] == pytest.approx(t_b)
    assert engine.finished["a"] == pytest.approx(t_b + (100 - steps_before - 10) * 0.031)
    # Idle time is not busy time.
    engine.submit("c", GpuRequest(30.0, output_tokens=1), at=100.0)
    engine.run_until(math.inf)
    assert engine.finished["c"] == pytest.approx(100.0 + 0.375 + 0.031)
    assert engine.busy_s < engine.t - 50


def test_segments_beat_windows_on_a_three_hour_talk() -> None:
    windows = [GpuRequest(1800.0, speech_s=1600.0) for _ in range(6)]
    segments = [GpuRequest(25.0, speech_s=6 * 1600.0 / 432) for _ in range(432)]
    result = compare_windows_and_segments(windows, segments)
    assert result["speedup"] == pytest.approx(result["windows_s"] / result["segments_s"])
    assert result["speedup"] > 3.0
    # Same speech, same output tokens either way: the gain is batching, not less text.
    model = GpuModel()
    assert sum(map(model.output_tokens, windows)) == pytest.approx(
        sum(map(model.output_tokens, segments)), rel=0.01
    )


def test_bad_figures_are_refused() -> None:
    with pytest.raises(ValueError):
        GpuFigures(max_sequences=0)
    with pytest.raises(ValueError):
        GpuFigures(step_fixed_s=-1.0)


def test_an_aborted_request_frees_its_slot_and_its_context() -> None:
    model = GpuModel(PLAIN)
    engine = BatchEngine(model)
    engine.submit("kept", GpuRequest(30.0, output_tokens=20), at=0.0)
    engine.submit("gone", GpuRequest(30.0, output_tokens=20), at=0.0)
    engine.submit("waiting", GpuRequest(30.0, output_tokens=20), at=1.0)
    engine.run_until(0.8)  # both prefilled, a few steps decoded; the third not arrived
    assert set(engine.active) == {"kept", "gone"}
    assert engine.abort("gone") and engine.abort("waiting") and not engine.abort("never")
    assert set(engine.active) == {"kept"} and not engine.waiting
    assert engine.context == engine._held["kept"]
    engine.run_until(math.inf)
    assert set(engine.finished) == {"kept"}


# The same round figures with chunked prefill: 500 tokens a step, so a 30-s prompt (375 tokens)
# and a part of the next fit in one step.
CHUNKED = replace(PLAIN, max_batched_tokens=500)


def test_chunked_prefill_splits_prompts_across_steps_and_keeps_decoding() -> None:
    model = GpuModel(CHUNKED)
    engine = BatchEngine(model)
    engine.submit("a", GpuRequest(30.0, output_tokens=3), at=0.0)
    engine.submit("b", GpuRequest(30.0, output_tokens=3), at=0.0)
    engine.run_until(math.inf)
    # Step 1: a's 375 prompt tokens and 125 of b's (0.03 + 0.5); a has its first token.
    # Step 2: a decodes (1 sequence) and b's last 250 prompt tokens (0.03 + 0.001 + 0.25).
    # Steps 3 and 4: both decode (0.032 each): a ends at step 3, b at step 4.
    t1 = 0.03 + 0.5
    t2 = t1 + 0.031 + 0.25
    assert engine.finished["a"] == pytest.approx(t2 + 0.032)
    assert engine.finished["b"] == pytest.approx(t2 + 0.032 + 0.031)
    assert engine.steps == 4
    assert engine.t == pytest.approx(engine.busy_s)


def test_a_long_prompt_does_not_stop_the_decoding_sequences() -> None:
    model = GpuModel(CHUNKED)
    engine = BatchEngine(model)
    engine.submit("short", GpuRequest(30.0, output_tokens=4), at=0.0)
    engine.run_until(0.0)  # its prefill step: it decodes from now on
    engine.submit("window", GpuRequest(1800.0, output_tokens=1), at=engine.t)  # 22,500 tokens
    engine.run_until(math.inf)
    # The short request decodes one token in each of the next steps, each carrying 499 prompt
    # tokens of the window: it ends 3 steps later, long before the window's 46 prefill steps.
    first = 0.03 + 0.375
    mixed = 0.03 + 0.001 + 0.499
    assert engine.finished["short"] == pytest.approx(first + 3 * mixed)
    assert engine.finished["window"] > engine.finished["short"] + 40 * 0.5
    # Without chunked prefill the short one waits for the whole 22.5 s prefill.
    whole = BatchEngine(GpuModel(PLAIN))
    whole.submit("short", GpuRequest(30.0, output_tokens=4), at=0.0)
    whole.run_until(0.4)
    whole.submit("window", GpuRequest(1800.0, output_tokens=1), at=whole.t)
    whole.run_until(math.inf)
    assert whole.finished["short"] > 22.5


def test_chunked_prefill_admits_only_while_a_slot_is_free_and_aborts_mid_prompt() -> None:
    model = GpuModel(CHUNKED)
    engine = BatchEngine(model)
    engine.submit("long", GpuRequest(60.0, output_tokens=2), at=0.0)  # 750 prompt tokens
    engine.run_until(0.0)  # step 1: 500 of them
    assert engine.prefilling == {"long": (250, 2)}
    assert engine.abort("long")  # dropped part-way through its prompt: its context freed
    assert engine.context == 0 and engine.idle
    for key in range(5):
        engine.submit(key, GpuRequest(30.0, output_tokens=50), at=engine.t)
    engine.run_until(math.inf)
    # Four slots: the fifth request is admitted only when the first one ends.
    assert engine.max_active == 4
    assert engine.finished[4] > min(engine.finished[k] for k in range(4))
    assert len(engine.finished) == 5


def test_the_token_budget_must_leave_room_beside_a_full_batch() -> None:
    with pytest.raises(ValueError):
        GpuFigures(max_sequences=256, max_batched_tokens=256)
