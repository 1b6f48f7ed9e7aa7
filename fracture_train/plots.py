"""PNG figures of a run: loss and accuracy curves, confusion matrices and ROC curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from fracture_curate.figures import plain_text
from fracture_curate.manifest import atomic_path


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically (figures are built without pyplot: no global state)."""
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


@plain_text
def plot_history(history: pd.DataFrame, path: str | Path) -> Path:
    """Train and val loss, and train and val accuracy, by epoch."""
    figure = Figure(figsize=(10, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        for split in ("train", "val"):
            axis.plot(history["epoch"], history[f"{split}_{metric}"], marker="o", label=split)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    loss_axis.set_title("Loss")
    accuracy_axis.set_title("Accuracy")
    return save_figure(figure, path)


@plain_text
def plot_confusion(
    matrix: list[list[int]], class_names: list[str], path: str | Path, title: str
) -> Path:
    """Counts by true (rows) and predicted (columns) class, shaded by share of the true class."""
    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.7 * len(class_names) + 2.5)
    figure = Figure(figsize=(side, side))
    axis = figure.subplots()
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return save_figure(figure, path)


@plain_text
def plot_roc(
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    positive: int | None,
    path: str | Path,
    title: str,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """ROC of the positive class with its operating points marked (binary), or one
    one-vs-rest curve per class."""
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    classes = [positive] if positive is not None else range(len(class_names))
    for index in classes:
        actual = targets == index
        if actual.all() or not actual.any():
            continue
        fpr, tpr, _ = roc_curve(actual, probs[:, index])
        axis.plot(fpr, tpr, label=class_names[index])
    if positive is not None:
        actual = targets == positive
        scores = probs[:, positive]
        for name, threshold in (thresholds or {}).items():
            chosen = scores >= threshold
            sensitivity = chosen[actual].mean() if actual.any() else np.nan
            false_positive = chosen[~actual].mean() if (~actual).any() else np.nan
            axis.plot(false_positive, sensitivity, "o", label=f"{name} threshold {threshold:.3f}")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title(title)
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    return save_figure(figure, path)
