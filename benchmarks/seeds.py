"""Seed ranges and their summaries for the benchmarks: every figure is quoted as the median over
several seeds (or repeats) and the worst of them, never the best one.

    --seeds 0-4      seeds 0, 1, 2, 3 and 4
    --seeds 0,3,7    those seeds
    --seeds 3        seed 3 alone
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parse_seeds(text: str) -> list[int]:
    """``A-B`` (inclusive), ``A,B,C`` or ``A``, in the order given, without repeats."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        if dash and first.strip():
            low, high = int(first), int(last)
            if high < low:
                raise ValueError(f"seed range {part!r} runs backwards")
            seeds += range(low, high + 1)
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seed in {text!r}")
    return list(dict.fromkeys(seeds))


def seed_range(seeds: Sequence[int], word: str = "seeds") -> str:
    """``seeds 0-4``, ``seeds 0, 3, 7`` or ``seed 3`` (``word`` names them: seeds, runs, ...)."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"{word.removesuffix('s')} {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{word} {seeds[0]}-{seeds[-1]}"
    return f"{word} {', '.join(map(str, seeds))}"


def median_worst(values: Sequence[float], higher_is_better: bool = True) -> tuple[float, float]:
    """The median and the worst of ``values`` (the lowest when higher is better); NaNs ignored."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    if not len(array):
        return float("nan"), float("nan")
    worst = array.min() if higher_is_better else array.max()
    return float(np.median(array)), float(worst)


def describe(
    values: Sequence[float],
    seeds: Sequence[int],
    higher_is_better: bool | None = True,
    form: str = "{:.3f}",
    word: str = "seeds",
) -> str:
    """``1.000 median, 0.975 worst (seeds 0-4)``; with ``higher_is_better=None`` (a figure with no
    better direction) ``1.000 median, 0.975-1.000 range (seeds 0-4)``."""
    median, worst = median_worst(values, bool(higher_is_better))
    span = seed_range(seeds, word)
    if np.isnan(median):
        return f"- ({span})"
    if higher_is_better is None:
        low, high = np.nanmin(values), np.nanmax(values)
        return (
            f"{form.format(median)} median, {form.format(low)}-{form.format(high)} range ({span})"
        )
    return f"{form.format(median)} median, {form.format(worst)} worst ({span})"
