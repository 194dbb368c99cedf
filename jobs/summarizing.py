"""The overall summary: window summaries reduced by text-only model calls (map-reduce).

Summaries are merged in runs until all of them fit one prompt of ``REDUCE_BUDGET_CHARS``, then
one call writes the overall summary the preset and the user's instructions ask for.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs.presets import Preset, merge_prompt, overall_prompt

# Characters of window summaries reduced in one text call (~12k tokens, well inside 32k).
REDUCE_BUDGET_CHARS = 48_000

Labelled = tuple[str, str]  # (time span, text)


def overall_summary(
    complete: Callable[[str], str], preset: Preset, instructions: str | None, items: list[Labelled]
) -> str | None:
    pairs = [(s, t) for s, t in items if t]
    if not pairs:
        return None
    while len(pairs) > 1 and sum(len(t) for _, t in pairs) > REDUCE_BUDGET_CHARS:
        merged: list[Labelled] = []
        group: list[Labelled] = []
        size = 0
        for pair in pairs:
            if group and size + len(pair[1]) > REDUCE_BUDGET_CHARS // 2:
                merged.append(_merge(complete, group))
                group, size = [], 0
            group.append(pair)
            size += len(pair[1])
        if group:
            merged.append(_merge(complete, group))
        if len(merged) >= len(pairs):
            break
        pairs = merged
    return complete(overall_prompt(preset, instructions, pairs)).strip() or None


def _merge(complete: Callable[[str], str], group: list[Labelled]) -> Labelled:
    if len(group) == 1:
        return group[0]
    first, last = group[0][0], group[-1][0]
    label = f"{first.split(' – ')[0]} – {last.split(' – ')[-1]}"
    return label, complete(merge_prompt(group))
