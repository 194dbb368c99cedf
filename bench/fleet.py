"""The GPU fleet under a real backlog (issue 18): never hung, kept full, fair between tenants.

    .venv/bin/python -m bench.fleet [--backlogs 3,12] [--hours 2] [--clip-minutes 5]
        [--gpu-cost-scale 4] [--a-alone | --only-a-alone] [--faults | --only-faults] [--timeout 3600]
        [--max-audio-beside-clips S] [--audio-beside-clips-ratio R]
    .venv/bin/python -m bench.fleet --local [--local-hours 3]

On the real parts: redis-server, PostgreSQL, ``voxbatch api`` with two tenants and their API keys,
one cpu worker (``--concurrency 2``), one gpu worker (``voxbatch worker --queues gpu``, default
settings), and the stand-in vLLM server in GPU mode (tests/standins/vllm_server.py, fast: audio is
measured, not decoded; costs multiplied by ``--gpu-cost-scale`` so that the modelled GPU, not this
machine's two cores, is the bottleneck). Recordings are the generated talk looped, each one
different audio (bench/stack.py), uploaded through the API.

One run, in this order:

1. B alone: tenant B's ``--clip-minutes`` clip, nothing else running: its latency (upload start to
   the job's ``finished_at``).
2. (``--a-alone``, costly) A alone: tenant A's recordings of the first backlog size, no B
   (``--only-a-alone``: B alone and A alone, nothing else; the ratios then come from two runs).
3. For each backlog size N in ``--backlogs``: the stand-in's counters reset; tenant A uploads N
   recordings of ``--hours``; once the server has requests in flight, ``--b-delay`` seconds later
   tenant B uploads its clip; every job runs to its end (or ``--timeout``).
4. (``--faults``) The first backlog again with the stand-in restarted to drop 1 upload in 50 in the
   middle of its body and never answer 1 request in 200 (seeded).

What is measured, from the stand-in's ``/stats`` (``traffic`` and ``gpu``) and the job rows:

* every job succeeded (and, under faults, the most times one distinct request reached the server:
  goal ≤ 2);
* the longest time with requests in flight and no answer from the server (goal < 60 s);
* peak requests in flight against ``VOXBATCH_MAX_INFLIGHT`` (256 unless set) and the largest batch
  the modelled GPU ran;
* efficiency: the ideal makespan of the same requests in the same model, all present at t = 0,
  over the achieved span (first request's arrival to last answer) of the backlog (goal ≥ 0.9);
* B's latency behind the backlog over B alone (goal ≤ 2); A's total time over A alone (goal ≤ 1.05).

``--local``: ``voxbatch run`` of a ``--local-hours`` talk against the stand-in in GPU mode (no broker,
no database server): efficiency and largest batch (goals ≥ 0.9, ≥ 200). Its efficiency is printed
twice: against the ideal with every request at t = 0, and against the ideal that keeps the job's one
dependency (the overall summary is written from the windows' summaries, so it is sent after them;
``GpuModel.ideal_one_job_s``), the best any client can do for one job.

A window that never ends is reported, not waited for: at ``--timeout`` the run prints each unfinished
job's state and its windows' states, and stops.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import VOXBATCH, Stack, StandIn, Submitted, as_epoch, distinct_recording, scratch

MAX_INFLIGHT = int(os.environ.get("VOXBATCH_MAX_INFLIGHT", "256"))
# The faulted run: the stand-in drops one upload in this many mid-body, and never answers one
# request in this many.
DROP_UPLOAD_EVERY = 50
HOLD_EVERY = 200
B_SEED = 9000
LOCAL_SEED = 7000


def deadlines_for(cost_scale: float) -> dict[str, str]:
    """The request deadlines an operator sets for a GPU ``cost_scale`` times slower than the one
    the defaults are sized for (each attempt's deadline grows with the time a step takes)."""
    from jobs.settings import Settings

    d = Settings()
    return {
        "VOXBATCH_REQUEST_DEADLINE_BASE_S": str(d.request_deadline_base_s * cost_scale),
        "VOXBATCH_REQUEST_DEADLINE_PER_AUDIO_S": str(d.request_deadline_per_audio_s * cost_scale),
        "VOXBATCH_REQUEST_DEADLINE_PER_TOKEN_S": str(d.request_deadline_per_token_s * cost_scale),
    }


@dataclass
class Phase:
    name: str
    submitted: list[Submitted] = field(default_factory=list)
    jobs: dict[str, Any] = field(default_factory=dict)
    ended: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)

    def ok(self) -> tuple[int, int]:
        return sum(str(j.status) == "succeeded" for j in self.jobs.values()), len(self.jobs)

    def latency(self, tenant: str) -> float | None:
        """Upload start of the tenant's first job to the last of its jobs' ends (seconds)."""
        mine = [s for s in self.submitted if s.tenant == tenant]
        ends = [as_epoch(self.jobs[s.job_id].finished_at) for s in mine]
        if not mine or any(e is None for e in ends):
            return None
        return max(e for e in ends if e is not None) - min(s.posted_at for s in mine)

    def efficiency(self) -> float | None:
        gpu = self.stats.get("gpu", {})
        return gpu["ideal_s"] / gpu["span_s"] if gpu.get("span_s") else None


def run_phase(
    stack: Stack,
    server: StandIn,
    name: str,
    a_files: list[Path],
    b_file: Path | None,
    b_delay_s: float,
    timeout_s: float,
) -> Phase:
    phase = Phase(name)
    server.reset()
    print(
        f"[{name}] uploading {len(a_files)} recording(s) for A" + (" and a clip for B" if b_file else ""),
        flush=True,
    )
    for path in a_files:
        phase.submitted.append(stack.upload("tenant-a", path))
    if b_file is not None:
        if a_files:
            # B arrives behind a backlog that is already at the server.
            deadline = time.monotonic() + timeout_s
            while server.stats()["traffic"]["in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(b_delay_s)
        phase.submitted.append(stack.upload("tenant-b", b_file))
    ids = [s.job_id for s in phase.submitted]
    phase.jobs, phase.ended = stack.wait_ended(ids, timeout_s)
    phase.stats = server.stats()
    if not phase.ended:
        phase.stuck = stack.stuck(phase.jobs)
    ok, total = phase.ok()
    traffic, gpu = phase.stats["traffic"], phase.stats.get("gpu", {})
    print(
        f"[{name}] {ok}/{total} succeeded{'' if phase.ended else ' (TIMED OUT)'}; "
        f"A {_fmt(phase.latency('tenant-a'))} s, B {_fmt(phase.latency('tenant-b'))} s; "
        f"peak in flight {traffic['peak_in_flight']}, largest batch {gpu.get('max_active')}, "
        f"longest silence {traffic['longest_gap_s']:.1f} s (from {traffic['longest_gap_at_s'][0]} s to "
        f"{traffic['longest_gap_at_s'][1]} s), efficiency {_fmt(phase.efficiency(), 3)}, "
        f"max sends {traffic['max_sends']} (dropped {traffic['dropped']}, held {traffic['held']}, "
        f"abandoned by their client {gpu.get('aborted', 0)})",
        flush=True,
    )
    print(f"[{name}] the longest silence: {traffic.get('longest_gap_what')}", flush=True)
    for most in traffic.get("most_sent", []):
        fates = ", ".join(f"{fate} at {t} s" for t, fate in most["fates"])
        print(f"[{name}] sent {most['sends']} times: {fates}", flush=True)
    for line in phase.stuck:
        print(f"[{name}] not ended: {line}", flush=True)
    for submitted in phase.submitted:
        if submitted.tenant == "tenant-b":
            print(
                f"[{name}] B's steps: {timeline(stack, submitted, phase.jobs[submitted.job_id])}", flush=True
            )
    return phase


def timeline(stack: Stack, submitted: Submitted, job: Any) -> str:
    """When each step of ``job`` (as the phase read it at its end) began and ended, in seconds since
    its upload began: where a short job's time went (a cpu slot, the gpu queue, the model server)."""

    def at(moment: Any) -> str:
        epoch = as_epoch(moment)
        return "-" if epoch is None else f"{epoch - submitted.posted_at:.1f}"

    parts = [
        f"created {at(job.created_at)}",
        f"split {at(job.split_started_at)}-{at(job.split_finished_at)}",
    ]
    for window in stack.runtime().store.windows(submitted.job_id):
        parts.append(
            f"window {window.index} sent {at(window.dispatched_at)} ran {at(window.started_at)}-"
            f"{at(window.finished_at)}"
        )
    parts += [f"reduce {at(job.reduce_started_at)}", f"finished {at(job.finished_at)}"]
    return ", ".join(parts)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fleet(args: argparse.Namespace) -> None:
    sizes = [int(n) for n in args.backlogs.split(",")]
    print(
        f"building recordings ({max(sizes)} x {args.hours:g} h, one {args.clip_minutes:g}-min clip) ...",
        flush=True,
    )
    a_files = [distinct_recording(args.hours * 3600, seed) for seed in range(1, max(sizes) + 1)]
    b_file = distinct_recording(args.clip_minutes * 60, B_SEED)
    phases: list[Phase] = []
    with scratch("voxbatch-fleet-", args.keep) as tmp:
        server = StandIn(tmp / "standin.log", cost_scale=args.gpu_cost_scale).start()
        try:
            env = deadlines_for(args.gpu_cost_scale)
            if args.max_audio_beside_clips is not None:
                env["VOXBATCH_MAX_AUDIO_BESIDE_CLIPS_S"] = str(args.max_audio_beside_clips)
            if args.audio_beside_clips_ratio is not None:
                env["VOXBATCH_AUDIO_BESIDE_CLIPS_RATIO"] = str(args.audio_beside_clips_ratio)
            with Stack(tmp, server.url, **env) as stack:
                stack.start_api()
                stack.create_key("tenant-a")
                stack.create_key("tenant-b")
                stack.cluster.start_worker("cpu", concurrency=2)
                stack.cluster.start_worker("gpu", concurrency=None)  # default: VOXBATCH_GPU_CONCURRENCY
                print(f"stack up in {tmp}", flush=True)
                b_alone = run_phase(stack, server, "B alone", [], b_file, 0, args.timeout)
                phases.append(b_alone)
                a_alone = None
                if (args.a_alone or args.only_a_alone) and b_alone.ended:
                    a_alone = run_phase(stack, server, "A alone", a_files[: sizes[0]], None, 0, args.timeout)
                    phases.append(a_alone)
                backlogs: list[Phase] = []
                for n in [] if args.only_faults or args.only_a_alone else sizes:
                    if not phases[-1].ended:
                        break
                    backlogs.append(
                        run_phase(
                            stack, server, f"{n} x A + B", a_files[:n], b_file, args.b_delay, args.timeout
                        )
                    )
                    phases.append(backlogs[-1])
                faulted = None
                if (args.faults or args.only_faults) and phases[-1].ended:
                    server.restart(
                        drop_upload_every=DROP_UPLOAD_EVERY, hold_every=HOLD_EVERY, fault_seed=args.fault_seed
                    )
                    faulted = run_phase(
                        stack,
                        server,
                        f"faults {sizes[0]} x A + B",
                        a_files[: sizes[0]],
                        b_file,
                        args.b_delay,
                        args.faults_timeout or args.timeout,
                    )
                    phases.append(faulted)
        finally:
            server.stop()
        report(args, b_alone, a_alone, backlogs, faulted)
        if args.keep:
            print(f"kept {tmp}")


def third_send_chance(faults: int) -> float:
    """The chance that one of ``faults`` faulted requests is faulted again when sent the second
    time, for a client that sends nothing twice but what was faulted: the stand-in faults by
    arrival (one drop in each block of ``DROP_UPLOAD_EVERY`` arrivals, one hold in each block of
    ``HOLD_EVERY``, at seeded places), so a second send is faulted as often as any arrival: this
    is how often even that client misses the goal of at most two sends, by the draw alone."""
    per_arrival = 1 / DROP_UPLOAD_EVERY + 1 / HOLD_EVERY
    return 1 - (1 - per_arrival) ** faults


def report(
    args: argparse.Namespace,
    b_alone: Phase,
    a_alone: Phase | None,
    backlogs: list[Phase],
    faulted: Phase | None,
) -> None:
    rows: list[tuple[str, str, str]] = []
    alone_b = b_alone.latency("tenant-b")
    rows.append(("B alone (latency)", f"{_fmt(alone_b)} s", ""))
    if a_alone is not None:
        rows.append(("A alone (total)", f"{_fmt(a_alone.latency('tenant-a'))} s", ""))
        rows.append(("A alone: efficiency ideal/achieved", _fmt(a_alone.efficiency(), 3), ""))
    for phase in [*backlogs, *([faulted] if faulted else [])]:
        ok, total = phase.ok()
        traffic, gpu = phase.stats["traffic"], phase.stats.get("gpu", {})
        rows.append(
            (
                f"{phase.name}: jobs succeeded",
                f"{ok}/{total}" + ("" if phase.ended else " (timed out)"),
                "all",
            )
        )
        rows.append(
            (
                f"{phase.name}: longest silence with requests in flight",
                f"{traffic['longest_gap_s']:.1f} s ({traffic['longest_gap_s'] / args.gpu_cost_scale:.1f} s "
                "on the modelled H100)",
                "< 60 s",
            )
        )
        rows.append(
            (
                f"{phase.name}: peak in flight / VOXBATCH_MAX_INFLIGHT",
                f"{traffic['peak_in_flight']}/{MAX_INFLIGHT} = "
                f"{traffic['peak_in_flight'] / MAX_INFLIGHT:.2f}",
                "1",
            )
        )
        rows.append((f"{phase.name}: largest batch", str(gpu.get("max_active")), ""))
        eff = phase.efficiency()
        rows.append(
            (
                f"{phase.name}: efficiency ideal/achieved",
                f"{gpu.get('ideal_s', 0):.0f} s / {gpu.get('span_s', 0):.0f} s = {_fmt(eff, 3)}",
                ">= 0.9",
            )
        )
        rows.append(
            (
                f"{phase.name}: B behind backlog / B alone",
                f"{_fmt(phase.latency('tenant-b'))} / {_fmt(alone_b)} = "
                f"{_fmt(_ratio(phase.latency('tenant-b'), alone_b), 2)}",
                "<= 2",
            )
        )
        if phase is faulted:
            rows.append((f"{phase.name}: most sends of one request", str(traffic["max_sends"]), "<= 2"))
            faults = traffic["dropped"] + traffic["held"]
            rows.append(
                (f"{phase.name}: dropped / never answered", f"{traffic['dropped']} / {traffic['held']}", "")
            )
            rows.append(
                (
                    f"{phase.name}: chance a client that sends again only what was faulted sends one 3 times",
                    f"{third_send_chance(faults):.0%}",
                    "",
                )
            )
    if a_alone is not None and backlogs:
        first = backlogs[0]
        rows.append(
            (
                f"{first.name}: A's total / A alone",
                f"{_fmt(first.latency('tenant-a'))} / {_fmt(a_alone.latency('tenant-a'))} = "
                f"{_fmt(_ratio(first.latency('tenant-a'), a_alone.latency('tenant-a')), 3)}",
                "<= 1.05",
            )
        )
    width = max(len(r[0]) for r in rows)
    print()
    print(
        f"fleet: A {args.hours:g} h recordings, B {args.clip_minutes:g} min, "
        f"GPU costs x{args.gpu_cost_scale:g}"
    )
    print(f"{'measure':<{width}}  {'value':<32}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<32}  {goal}")


def local(args: argparse.Namespace) -> None:
    recording = distinct_recording(args.local_hours * 3600, LOCAL_SEED)
    with scratch("voxbatch-fleet-local-", args.keep) as tmp:
        server = StandIn(tmp / "standin.log", cost_scale=args.gpu_cost_scale).start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
            env.update(
                VOXBATCH_DATA_DIR=str(tmp / "data"),
                VOXBATCH_ENGINE="vllm",
                VOXBATCH_VLLM_URL=server.url,
                **deadlines_for(args.gpu_cost_scale),
            )
            start = time.monotonic()
            done = subprocess.run(
                [VOXBATCH, "run", str(recording), "--output-dir", str(tmp / "out")],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
            wall = time.monotonic() - start
            stats = server.stats()
        finally:
            server.stop()
    gpu, traffic = stats.get("gpu", {}), stats["traffic"]
    eff = gpu["ideal_s"] / gpu["span_s"] if gpu.get("span_s") else None
    print(
        f"voxbatch run of a {args.local_hours:g} h talk against the GPU mode "
        f"(costs x{args.gpu_cost_scale:g}): "
        f"exit {done.returncode}, {wall:.1f} s wall"
    )
    if done.returncode:
        print(done.stderr[-2000:])
    chained = gpu["ideal_one_job_s"] / gpu["span_s"] if gpu.get("span_s") else None
    print(
        f"  requests {gpu.get('requests')}, span {gpu.get('span_s', 0):.1f} s; "
        f"ideal {gpu.get('ideal_s', 0):.1f} s (every request at t = 0): efficiency {_fmt(eff, 3)}; "
        f"ideal {gpu.get('ideal_one_job_s', 0):.1f} s (the overall summary after the windows' "
        f"summaries, as any client must): efficiency {_fmt(chained, 3)} (goal >= 0.9)"
    )
    print(
        f"  largest batch {gpu.get('max_active')} (goal >= 200), peak in flight {traffic['peak_in_flight']}, "
        f"longest silence {traffic['longest_gap_s']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backlogs", default="3", help="tenant A's recording counts, one run each (e.g. 3,12)"
    )
    parser.add_argument("--hours", type=float, default=2.0, help="length of each of A's recordings")
    parser.add_argument("--clip-minutes", type=float, default=5.0, help="length of B's clip")
    parser.add_argument("--b-delay", type=float, default=20.0, help="seconds into the backlog B uploads")
    parser.add_argument("--gpu-cost-scale", type=float, default=4.0, help="a GPU this many times slower")
    parser.add_argument("--a-alone", action="store_true", help="also run A alone (costly)")
    parser.add_argument("--only-a-alone", action="store_true", help="B alone and A alone, nothing else")
    parser.add_argument(
        "--faults", action="store_true", help="also the first backlog with dropped/held requests"
    )
    parser.add_argument(
        "--only-faults", action="store_true", help="B alone, then only the faulted backlog (no clean one)"
    )
    parser.add_argument("--fault-seed", type=int, default=18)
    parser.add_argument(
        "--max-audio-beside-clips", type=float, default=None, help="VOXBATCH_MAX_AUDIO_BESIDE_CLIPS_S"
    )
    parser.add_argument(
        "--audio-beside-clips-ratio", type=float, default=None, help="VOXBATCH_AUDIO_BESIDE_CLIPS_RATIO"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one phase may take")
    parser.add_argument(
        "--faults-timeout", type=float, default=None, help="the faulted phase's (default --timeout)"
    )
    parser.add_argument("--local", action="store_true", help="voxbatch run of one long talk instead")
    parser.add_argument("--local-hours", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args()
    local(args) if args.local else fleet(args)


if __name__ == "__main__":
    main()
