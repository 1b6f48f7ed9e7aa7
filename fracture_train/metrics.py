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

DEFAULT_THRESHOLD = 0.5
ECE_BINS = 15


def predict_labels(
    probs: np.ndarray, positive: int | None = None, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Class indices: ``positive`` where its probability >= ``threshold`` (binary), else argmax."""
    if positive is None:
        return probs.argmax(axis=1)
    negative = 1 - positive
    return np.where(probs[:, positive] >= threshold, positive, negative)


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
) -> dict[str, Any]:
    """Every metric of an evaluation (of at least one sample), JSON-ready.

    ``targets`` are class indices and ``probs`` an N x K matrix of class probabilities in the
    order of ``class_names``. ``positive`` names the positive class index of a binary task;
    ``extra_threshold`` (binary only) adds sensitivity and specificity at a second threshold,
    e.g. one chosen on the validation set.
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
    return metrics


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
