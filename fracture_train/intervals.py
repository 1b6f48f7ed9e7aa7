"""Confidence intervals for evaluation metrics: cluster bootstrap, Wilson and paired AUROC.

The bootstrap resamples groups (patients), not images, because images of one patient are not
independent. It is vectorised: a block of resamples is a matrix of image weights (how often each
image's group was drawn), and every metric is computed for all rows of the block at once from
weighted counts, with the same definitions as ``metrics.classification_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from statistics import NormalDist

import numpy as np

from fracture_train.decisions import DEFAULT_THRESHOLD, predict_labels

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
#: Fewer independent groups than this give a bootstrap too few distinct resamples to show a
#: spread (two patients give three): their bootstrap intervals are not stated.
MIN_BOOTSTRAP_UNITS = 10
# A block of weights (resamples x images, float64) stays under this many bytes; the gathers and
# products made from it are of the same order.
_BLOCK_BYTES = 256 * 2**20


def wilson_interval(
    successes: float, n: float, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) when n == 0. Counts may be effective
    (fractional) ones: ``n`` divided by a design effect, ``successes`` in proportion."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    proportion = successes / n
    shrink = 1 + z**2 / n
    centre = (proportion + z**2 / (2 * n)) / shrink
    half_width = z / shrink * math.sqrt(proportion * (1 - proportion) / n + z**2 / (4 * n**2))
    # The bounds are exactly 0 with no successes and 1 with no failures; rounding would miss them.
    low = 0.0 if successes == 0 else centre - half_width
    high = 1.0 if successes == n else centre + half_width
    return float(low), float(high)


def design_effect(spread: np.ndarray, successes: float, n: int) -> float:
    """Kish's design effect of a proportion measured on grouped images: the variance of its
    cluster-bootstrap ``spread`` over the binomial variance of ``n`` independent images, at
    least 1. The binomial variance takes Agresti-Coull's adjusted proportion, so that 0 of n
    and n of n have one."""
    defined = np.asarray(spread, dtype=np.float64)
    defined = defined[~np.isnan(defined)]
    if n == 0 or len(defined) < 2:
        return 1.0
    adjusted = (successes + 2) / (n + 4)
    return max(1.0, float(defined.var(ddof=1)) / (adjusted * (1 - adjusted) / n))


def group_weights(
    groups: np.ndarray, n_resamples: int, seed: int, block: int
) -> Iterator[np.ndarray]:
    """Blocks (at most ``block`` resamples x n images, float64) of cluster-bootstrap image weights.

    Each resample draws as many groups as there are distinct ones, with replacement, from
    ``np.random.default_rng(seed)``; an image's weight is the number of times its group was drawn.
    The blocks together hold ``n_resamples`` rows, and the same seed gives the same rows whatever
    ``block`` is: ``Generator.integers`` continues one stream across calls (checked in the tests).
    """
    if block < 1:
        raise ValueError(f"block is {block}; pass at least 1 resample per block")
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    group_index = group_index.ravel()
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        drawn = rng.integers(0, n_groups, size=(rows, n_groups))
        # Count draws per (resample, group) with one bincount: shift each row's groups apart.
        flat = (drawn + n_groups * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * n_groups).reshape(rows, n_groups)
        yield counts[:, group_index].astype(np.float64)


def bootstrap_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    *,
    positive: int | None,
    thresholds: Sequence[float] = (DEFAULT_THRESHOLD,),
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each metric over ``n_resamples`` cluster-bootstrap resamples.

    Returns arrays of length ``n_resamples``, NaN where a resample leaves the metric undefined.
    Keys: accuracy, balanced_accuracy, cohen_kappa, auroc, ``precision/k``, ``recall/k`` and
    ``specificity/k`` per class index k, and (binary) ``sensitivity@i`` and ``specificity@i``
    per index i of ``thresholds``.

    Args:
        targets: n class indices.
        probs: n x K class probabilities.
        groups: n group keys (strings or ints), the units resampled, e.g. patients.
        positive: the positive class index of a binary task (K == 2), else None.
        thresholds: binary only, thresholds on the positive probability for sensitivity and
            specificity; the other metrics use ``metrics.predict_labels`` at 0.5.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling.
    """
    targets = np.asarray(targets)
    if len(targets) == 0:
        raise ValueError("no images to bootstrap; pass at least one")
    block = max(1, _BLOCK_BYTES // (8 * len(targets)))
    blocks = [
        _weighted_metrics(targets, probs, weights, positive=positive, thresholds=thresholds)
        for weights in group_weights(groups, n_resamples, seed, block)
    ]
    return {key: np.concatenate([values[key] for values in blocks]) for key in blocks[0]}


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution, NaN resamples left out.

    (nan, nan) when fewer than half the resamples define the metric: the rest would be a biased
    selection of resamples.
    """
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    if len(defined) == 0 or 2 * len(defined) < len(values):
        return math.nan, math.nan
    tail = 50 * (1 - confidence)
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def paired_auroc_difference(
    targets: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """AUROC(scores_a) - AUROC(scores_b) over paired cluster-bootstrap resamples.

    Both models are scored on the same resamples (the same weights), so the spread reflects the
    difference and not each model's own sampling noise. ``targets`` are binary (bool or 0/1) and
    each model gives one score per image; NaN where a resample lacks positives or negatives.
    """
    actual = np.asarray(targets).astype(bool)
    block = max(1, _BLOCK_BYTES // (8 * max(1, len(actual))))
    differences = [
        _weighted_auroc(actual, np.asarray(scores_a), weights)
        - _weighted_auroc(actual, np.asarray(scores_b), weights)
        for weights in group_weights(groups, n_resamples, seed, block)
    ]
    return np.concatenate(differences)


def _weighted_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    positive: int | None,
    thresholds: Sequence[float] = (DEFAULT_THRESHOLD,),
) -> dict[str, np.ndarray]:
    """The metrics of ``bootstrap_metrics`` for each row of ``weights`` (resamples x images)."""
    n_classes = probs.shape[1]
    predicted = predict_labels(probs, positive, DEFAULT_THRESHOLD)
    cells = np.eye(n_classes * n_classes)[targets * n_classes + predicted]
    confusion = (weights @ cells).reshape(-1, n_classes, n_classes)  # [resample, true, predicted]
    total = confusion.sum(axis=(1, 2))
    correct = np.trace(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)
    predicted_count = confusion.sum(axis=1)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    recall = _divide(hits, support)
    chance_agreement = (support * predicted_count).sum(axis=1)
    results = {
        "accuracy": correct / total,
        "balanced_accuracy": _mean_of_defined(recall, axis=1),
        "cohen_kappa": _divide(total * correct - chance_agreement, total**2 - chance_agreement),
    }
    if positive is None:
        areas = np.stack(
            [_weighted_auroc(targets == k, probs[:, k], weights) for k in range(n_classes)],
            axis=1,
        )
        results["auroc"] = _mean_of_defined(areas, axis=1)
    else:
        results["auroc"] = _weighted_auroc(targets == positive, probs[:, positive], weights)
    negatives = total[:, None] - support
    true_negatives = negatives - (predicted_count - hits)
    precision = _divide(hits, predicted_count)
    specificity = _divide(true_negatives, negatives)
    for k in range(n_classes):
        results[f"precision/{k}"] = precision[:, k]
        results[f"recall/{k}"] = recall[:, k]
        results[f"specificity/{k}"] = specificity[:, k]
    if positive is not None:
        actual = targets == positive
        positive_weight = weights @ actual
        negative_weight = weights @ ~actual
        for index, threshold in enumerate(thresholds):
            called = probs[:, positive] >= threshold
            results[f"sensitivity@{index}"] = _divide(weights @ (called & actual), positive_weight)
            results[f"specificity@{index}"] = _divide(
                weights @ (~called & ~actual), negative_weight
            )
    return results


def _weighted_auroc(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights``: the weighted Mann-Whitney statistic, ties counted 1/2.

    Negatives' weight per distinct score level comes from ``np.add.reduceat`` over the negatives
    sorted by score, the same sums as ``W_neg @ one_hot(level)`` without an n x levels matrix.
    A positive at level s earns the negative weight below s plus half the weight at s, which is
    the mean of the cumulative negative weight before and after level s.
    """
    negative_columns = np.flatnonzero(~positives)
    positive_columns = np.flatnonzero(positives)
    if len(negative_columns) == 0 or len(positive_columns) == 0:
        return np.full(len(weights), np.nan)
    order = np.argsort(scores[negative_columns], kind="stable")
    negative_columns = negative_columns[order]
    levels, level_starts = np.unique(scores[negative_columns], return_index=True)
    at_level = np.add.reduceat(weights[:, negative_columns], level_starts, axis=1)
    cumulative = np.zeros((len(weights), len(levels) + 1))
    np.cumsum(at_level, axis=1, out=cumulative[:, 1:])
    positive_scores = scores[positive_columns]
    before = np.searchsorted(levels, positive_scores, side="left")
    after = np.searchsorted(levels, positive_scores, side="right")
    positive_weights = weights[:, positive_columns]
    wins = (positive_weights * (cumulative[:, before] + cumulative[:, after])).sum(axis=1) / 2
    return _divide(wins, positive_weights.sum(axis=1) * cumulative[:, -1])


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is 0."""
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    )
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _mean_of_defined(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` of the non-NaN values, NaN where there are none (without a warning)."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(axis=axis), defined.sum(axis=axis))
