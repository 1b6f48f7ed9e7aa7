"""Evaluation metrics that clinicians read, computed from class probabilities.

Binary tasks have a positive class (the fracture); a prediction is positive when its probability
is at least the decision threshold. Several classes use the most probable class, and report
sensitivity and specificity per class, one against the rest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from fracture_train.decisions import DEFAULT_THRESHOLD, predict_labels
from fracture_train.intervals import (
    CONFIDENCE,
    MIN_BOOTSTRAP_UNITS,
    bootstrap_metrics,
    design_effect,
    percentile_interval,
    wilson_interval,
)

ECE_BINS = 15
#: The bootstrap's seed: fixed, so that an evaluation's intervals are the same every time.
BOOTSTRAP_SEED = 0


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE over ``n_bins`` equal-width confidence bins ``((i-1)/n, i/n]``.

    The sum over bins of (share of samples in the bin) x |accuracy - mean confidence|.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    bins = np.ceil(confidence * n_bins)  # bin i holds the confidences in ((i-1)/n, i/n]
    ece = 0.0
    for index in np.unique(bins):
        members = bins == index
        ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def threshold_for_sensitivity(positives: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (score >= threshold among positives) >= ``target``.

    ``positives`` is true (or 1) for the positive samples. NaN when there are none.
    """
    positives = np.sort(scores[np.asarray(positives, dtype=bool)])[::-1]
    if len(positives) == 0:
        return math.nan
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[needed - 1])


def rates_at(positives: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and the four counts when ``score >= threshold`` is positive;
    ``positives`` is true (or 1) for the positive samples."""
    predicted = scores >= threshold
    actual = np.asarray(positives, dtype=bool)
    tp, fn = int((predicted & actual).sum()), int((~predicted & actual).sum())
    tn, fp = int((~predicted & ~actual).sum()), int((predicted & ~actual).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def auroc(targets: np.ndarray, probs: np.ndarray, positive: int | None) -> dict[str, Any]:
    """AUROC of the positive class (binary), or per class one-vs-rest and their macro mean.

    A class whose one-vs-rest problem has a single outcome has no AUROC (NaN); the macro mean
    is taken over the classes that have one.
    """
    if positive is not None:
        value = _binary_auroc(targets == positive, probs[:, positive])
        return {"auroc": value, "per_class": {}}
    per_class = [_binary_auroc(targets == c, probs[:, c]) for c in range(probs.shape[1])]
    defined = [value for value in per_class if not math.isnan(value)]
    macro = float(np.mean(defined)) if defined else math.nan
    return {"auroc": macro, "per_class": dict(enumerate(per_class))}


def classification_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    positive: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    extra_threshold: float | None = None,
    groups: np.ndarray | None = None,
    resamples: int = 0,
) -> dict[str, Any]:
    """Every metric of an evaluation (of at least one sample), JSON-ready.

    ``targets`` are class indices and ``probs`` an N x K matrix of class probabilities in the
    order of ``class_names``. ``positive`` names the positive class index of a binary task;
    ``extra_threshold`` (binary only) adds sensitivity and specificity at a second threshold,
    e.g. one chosen on the validation set. With ``resamples`` and ``groups`` (the independent
    unit of each sample: its patient), ``intervals`` holds 95% intervals
    (:func:`metric_intervals`).
    """
    labels = list(range(len(class_names)))
    predicted = predict_labels(probs, positive, threshold)
    matrix = confusion_matrix(targets, predicted, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=labels, zero_division=0
    )
    areas = auroc(targets, probs, positive)
    total = matrix.sum()
    per_class = {}
    for index, name in enumerate(class_names):
        tp = matrix[index, index]
        fn = matrix[index].sum() - tp
        fp = matrix[:, index].sum() - tp
        tn = total - tp - fn - fp
        per_class[name] = {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
        }
        if positive is None:
            per_class[name]["auroc"] = areas["per_class"][index]
    metrics: dict[str, Any] = {
        "n": len(targets),
        "accuracy": float(accuracy_score(targets, predicted)),
        "balanced_accuracy": float(recall[support > 0].mean()),  # over the classes present
        "auroc": areas["auroc"],
        "cohen_kappa": _kappa(targets, predicted),
        "ece": expected_calibration_error(probs, targets),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
    if positive is not None:
        binary = targets == positive
        metrics["at_threshold"] = rates_at(binary, probs[:, positive], threshold)
        if extra_threshold is not None:
            metrics["at_val_threshold"] = rates_at(binary, probs[:, positive], extra_threshold)
    if resamples and groups is not None:
        thresholds = {"at_threshold": threshold}
        if positive is not None and extra_threshold is not None:
            thresholds["at_val_threshold"] = extra_threshold
        metrics["intervals"] = metric_intervals(
            targets,
            probs,
            groups,
            class_names,
            positive=positive,
            thresholds=thresholds,
            resamples=resamples,
        )
    return metrics


def metric_intervals(
    targets: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    class_names: list[str],
    *,
    positive: int | None,
    thresholds: dict[str, float],
    resamples: int,
) -> dict[str, Any]:
    """95% intervals of the figures of :func:`classification_metrics`, as ``[low, high]``.

    A bootstrap resamples whole ``groups`` (patients: their images are not independent), with
    a fixed seed, and gives the intervals of AUROC, balanced accuracy and kappa (percentiles).
    Proportions (accuracy, sensitivity, specificity, precision, recall) get Wilson intervals,
    which a percentile bootstrap is poor at near 0 and 1 (23 of 23 correct is not certainty):
    on the images' count when every group holds one image, else on the effective count, the
    images over the design effect the bootstrap measures (:func:`design_effect`).
    With fewer than :data:`MIN_BOOTSTRAP_UNITS` independent groups a bootstrap cannot show a
    spread: its intervals are NaN and each group counts once. ``thresholds`` names the binary
    decision thresholds: ``{"at_threshold": 0.5, ...}``.
    """
    groups = np.asarray(groups)
    independent = len(np.unique(groups)) == len(groups)
    keys = list(thresholds) if positive is not None else []
    spread = bootstrap_metrics(
        targets,
        probs,
        groups,
        positive=positive,
        thresholds=[thresholds[key] for key in keys],
        n_resamples=resamples,
        seed=BOOTSTRAP_SEED,
    )

    units = len(np.unique(groups))
    enough = units >= MIN_BOOTSTRAP_UNITS

    def spread_of(key: str) -> list[float]:
        return list(percentile_interval(spread[key])) if enough else [math.nan, math.nan]

    def proportion(key: str, hits: np.ndarray, members: np.ndarray) -> list[float]:
        """Wilson's interval of ``hits`` among ``members`` (boolean masks), on the effective
        count where images are grouped; a design effect the spread cannot show (every
        resample alike, or too few groups) is taken at its largest: each group of members
        counted once."""
        successes, total = int((hits & members).sum()), int(members.sum())
        effective = float(total)
        if not independent and total:
            clusters = len(np.unique(groups[members]))
            if enough and np.nanstd(spread[key]) > 0:
                effective = total / design_effect(spread[key], successes, total)
            else:
                effective = float(clusters)
        return list(wilson_interval(successes * effective / max(total, 1), effective))

    predicted = predict_labels(probs, positive, DEFAULT_THRESHOLD)
    everyone = np.ones(len(targets), dtype=bool)
    found: dict[str, Any] = {
        "method": {
            "confidence": CONFIDENCE,
            "resamples": resamples,
            "seed": BOOTSTRAP_SEED,
            "units": units,
            "bootstrapped": enough,
            "proportions": "wilson" if independent else "wilson, design effect",
        },
        "accuracy": proportion("accuracy", predicted == targets, everyone),
        "balanced_accuracy": spread_of("balanced_accuracy"),
        "auroc": spread_of("auroc"),
        "cohen_kappa": spread_of("cohen_kappa"),
        "per_class": {},
    }
    for index, name in enumerate(class_names):
        actual, called = targets == index, predicted == index
        found["per_class"][name] = {
            "precision": proportion(f"precision/{index}", actual, called),
            "recall": proportion(f"recall/{index}", called, actual),
            "specificity": proportion(f"specificity/{index}", ~called, ~actual),
        }
    for number, key in enumerate(keys):
        actual, called = targets == positive, probs[:, positive] >= thresholds[key]
        found[key] = {
            "sensitivity": proportion(f"sensitivity@{number}", called, actual),
            "specificity": proportion(f"specificity@{number}", ~called, ~actual),
        }
    return found


def _binary_auroc(actual: np.ndarray, scores: np.ndarray) -> float:
    if actual.all() or not actual.any():
        return math.nan
    return float(roc_auc_score(actual, scores))


def _kappa(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa; NaN when it is undefined (both raters constant and agreeing)."""
    if len(np.unique(targets)) == 1 and (predicted == targets).all():
        return math.nan
    return float(cohen_kappa_score(targets, predicted))


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else math.nan
