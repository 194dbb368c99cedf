"""How fast can a small job be behind a backlog on one modelled GPU? The floor, from the model alone.

    .venv/bin/python -m bench.fairness_floor [--clip-minutes 5] [--summary-tokens 300]

The fleet benchmark (bench/fleet.py) measures tenant B's 5-minute clip behind tenant A's backlog
over B alone on the real stack. This one asks the GPU model itself (tests/standins/gpu_model.py,
the figures measured on an H100) what any client could get, so that figure can be read against a
limit: A keeps the server full (256 requests in flight, 30-s segments and 30-minute summaries in
the proportion of a real job, a new request the moment one finishes); B's requests (its segments
and its one summary, which hears the whole clip and is its longest chain) arrive mid-backlog and
are sent before any more of A's. Printed, in modelled seconds:

* B alone (batch 1, nothing else on the GPU);
* B behind the backlog with A's requests still sent as slots free (what a client that keeps the
  server full gets, B first in its line);
* the same with the client holding A's new requests back while B has any in flight, at several
  caps on A's requests in flight (0: A sends nothing new until B is done), with A's throughput
  over the same span beside it, so the trade is visible;
* the same two with the server ordering its own waiting queue by priority (B ahead of A's requests
  already sent; vLLM's ``--scheduling-policy priority``).

Why B cannot be within 2x of alone while the server is kept full, in this model: B's summary
decodes one token per step; a step with 256 sequences costs about twice a step with one (30.9 ms
fixed + 0.1 ms per sequence + the KV cache read), and every request admitted is prefilled between
steps (a 30-s segment ~40 ms, a 30-minute window 2.4 s), which is most of the GPU's time for this
audio-heavy load.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Hashable

from tests.standins.gpu_model import BatchEngine, GpuModel, GpuRequest

SEGMENT_S = 30.0
SEGMENTS_PER_WINDOW = 60  # a 30-minute window's speech segments
WINDOW_S = 1800.0
WARM_S = 60.0  # modelled seconds of backlog before B arrives
FULL = 256


class _PriorityEngine(BatchEngine):
    """The server ordering its waiting queue by priority: B's requests go ahead of A's waiting."""

    def submit(self, key: Hashable, request: GpuRequest, at: float) -> None:
        super().submit(key, request, at)
        if isinstance(key, tuple) and key[0] == "b":
            item = self.waiting.pop()
            place = next((i for i, w in enumerate(self.waiting) if _tenant(w[0]) != "b"), len(self.waiting))
            self.waiting.insert(place, item)


def _tenant(key: Hashable) -> str:
    return str(key[0]) if isinstance(key, tuple) else ""


def b_requests(clip_s: float, summary_tokens: int) -> list[GpuRequest]:
    segments = max(1, round(clip_s / SEGMENT_S))
    return [GpuRequest(SEGMENT_S)] * segments + [GpuRequest(clip_s, output_tokens=summary_tokens)]


def behind_backlog(
    model: GpuModel, clip_s: float, summary_tokens: int, a_cap_while_b: int, server_priority: bool
) -> tuple[float, float]:
    """B's latency behind A's full backlog, and A's answers per modelled second over the run."""
    engine: BatchEngine = _PriorityEngine(model) if server_priority else BatchEngine(model)
    keys = itertools.count()
    a_pattern = itertools.cycle(["segment"] * SEGMENTS_PER_WINDOW + ["summary"])
    a_out: set[Hashable] = set()
    b_out: set[Hashable] = set()
    b_start: float | None = None
    b_end: float | None = None
    a_done = 0

    def send_a(limit: int) -> None:
        while len(a_out) < limit:
            kind = next(a_pattern)
            request = GpuRequest(SEGMENT_S) if kind == "segment" else GpuRequest(WINDOW_S, output_tokens=300)
            key = ("a", next(keys))
            engine.submit(key, request, at=engine.t)
            a_out.add(key)

    while b_end is None or engine.t < b_end + WARM_S / 2:
        send_a(a_cap_while_b if b_out else FULL - len(b_out))
        if b_start is None and engine.t >= WARM_S:
            b_start = engine.t
            for request in b_requests(clip_s, summary_tokens):
                b_key = ("b", next(keys))
                engine.submit(b_key, request, at=engine.t)
                b_out.add(b_key)
        for key, finished in engine.run_until(engine.t):
            if _tenant(key) == "a":
                a_out.discard(key)
                a_done += 1
            else:
                b_out.discard(key)
                if not b_out:
                    b_end = finished
    assert b_start is not None and b_end is not None
    return b_end - b_start, a_done / engine.t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-minutes", type=float, default=5.0)
    parser.add_argument("--summary-tokens", type=int, default=300, help="B's summary answer (the stand-in's)")
    args = parser.parse_args()
    model = GpuModel()
    clip_s = args.clip_minutes * 60
    alone = max(model.alone_s(r) for r in b_requests(clip_s, args.summary_tokens))
    print(f"B alone (its longest request at batch 1): {alone:.2f} s modelled")
    full_b, full_a = behind_backlog(model, clip_s, args.summary_tokens, FULL, server_priority=False)
    header = ("server", "A cap while B runs", "B behind backlog", "/ alone", "A answers/s")
    print(f"{header[0]:<10} {header[1]:<20} {header[2]:>17} {header[3]:>8} {header[4]:>12}")
    print(f"{'FCFS':<10} {'256 (kept full)':<20} {full_b:>15.2f} s {full_b / alone:>7.2f}x {full_a:>12.2f}")
    for priority in (False, True):
        for cap in (128, 64, 32, 0):
            b, a = behind_backlog(model, clip_s, args.summary_tokens, cap, server_priority=priority)
            name = "priority" if priority else "FCFS"
            print(f"{name:<10} {cap:<20} {b:>15.2f} s {b / alone:>7.2f}x {a:>12.2f}")


if __name__ == "__main__":
    main()
