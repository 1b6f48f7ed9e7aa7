"""Sample predictions of an evaluation: per true class, its most confident correct and wrong images.

A clinician reads the metrics, then looks at these: the images the model was surest about, right
and wrong, show what it learned and where it fails with confidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fracture_curate.figures import plain_text
from fracture_train.plots import save_figure

SAMPLES_PER_KIND = 2  #: per class: this many correct and this many wrong
SAMPLE_COLUMNS = [
    "position",
    "path",
    "label",
    "kind",
    "predicted_label",
    "confidence",
    "true_probability",
]
NAME_LIMIT = 28  #: file names longer than this are shortened in the figure
KIND_COLOURS = {"correct": "tab:green", "wrong": "tab:red"}


def select_samples(
    frame: pd.DataFrame,
    probs: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    per_kind: int = SAMPLES_PER_KIND,
) -> pd.DataFrame:
    """Per true class, the ``per_kind`` most confident correct predictions and the ``per_kind``
    most confident wrong ones.

    Args:
        frame: the evaluated rows, in the order of ``probs``; columns ``path`` and ``label`` (the
            true class name). Rows whose label is not in ``class_names`` are never selected.
        probs: N x K class probabilities, columns in the order of ``class_names``.
        predicted: N predicted class indices, as the evaluation reports them (at its threshold).
        class_names: the classes, in the order of the columns of ``probs``.
        per_kind: how many correct and how many wrong samples per class, at most.

    Returns:
        One row per sample with ``SAMPLE_COLUMNS``, by class (in ``class_names`` order), then
        kind ("correct" before "wrong"), then confidence (the probability of the predicted class)
        descending; ties by path, then position. A class with fewer images gives fewer rows.
    """
    if per_kind < 0:
        raise ValueError(f"per_kind must be at least 0, not {per_kind}")
    predicted = np.asarray(predicted, dtype=np.intp)
    names = np.asarray(class_names, dtype=object)
    true_index = frame["label"].map({name: i for i, name in enumerate(class_names)}).to_numpy()
    known = ~pd.isna(true_index)
    positions = np.flatnonzero(known)
    true_index = true_index[known].astype(np.intp)
    predicted = predicted[positions]
    wrong = predicted != true_index
    candidates = pd.DataFrame(
        {
            "position": positions,
            "path": frame["path"].to_numpy()[positions],
            "label": names[true_index],
            "kind": np.where(wrong, "wrong", "correct"),
            "predicted_label": names[predicted],
            "confidence": probs[positions, predicted],
            "true_probability": probs[positions, true_index],
            "class_index": true_index,
            "wrong": wrong,
        }
    )
    ordered = candidates.sort_values(
        ["class_index", "wrong", "confidence", "path", "position"],
        ascending=[True, True, False, True, True],
        kind="mergesort",
    )
    chosen = ordered.groupby(["class_index", "wrong"], sort=False).head(per_kind)
    return chosen[SAMPLE_COLUMNS].reset_index(drop=True)


@plain_text
def plot_samples(
    samples: pd.DataFrame,
    images: list[np.ndarray],
    class_names: list[str],
    path: str | Path,
    title: str,
) -> Path:
    """The samples as a grid: one row per class, its correct then its wrong samples; each image
    titled with its kind, predicted label and confidence, and its file name.

    ``images[i]`` is the H x W x 3 uint8 image of ``samples.iloc[i]`` (as the model saw it).
    Correct samples are framed and titled in green, wrong ones in red; the wrong ones start in
    the same column for every class, and empty cells are left blank.
    """
    if len(images) != len(samples):
        raise ValueError(f"{len(images)} images for {len(samples)} samples; pass one per sample")
    if samples.empty:
        figure = Figure(figsize=(4, 1.5))
        axis = figure.subplots()
        axis.set_axis_off()
        axis.text(0.5, 0.5, "no predictions to show", ha="center", va="center")
        axis.set_title(title)
        return save_figure(figure, path)
    cells, columns = _grid_cells(samples, class_names)
    figure = Figure(figsize=(2.4 * columns + 0.8, 2.8 * len(class_names) + 0.6))
    axes = figure.subplots(len(class_names), columns, squeeze=False)
    for row, name in enumerate(class_names):
        axes[row, 0].set_ylabel(f"true: {name}")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    for (_, sample), image, cell in zip(samples.iterrows(), images, cells, strict=True):
        axis = axes[cell]
        colour = KIND_COLOURS[sample["kind"]]
        axis.imshow(image)
        axis.set_title(
            f"{sample['kind']}: {sample['predicted_label']} {sample['confidence']:.2f}\n"
            f"{_short_name(sample['path'])}",
            color=colour,
            fontsize=9,
        )
        for spine in axis.spines.values():
            spine.set_visible(True)
            spine.set_color(colour)
            spine.set_linewidth(3)
    figure.suptitle(title)
    return save_figure(figure, path)


def _grid_cells(samples: pd.DataFrame, class_names: list[str]) -> tuple[list[tuple[int, int]], int]:
    """The (row, column) of each sample and the number of columns: one row per class, its
    correct samples from the first column, its wrong ones from the same column in every row."""
    rows = [class_names.index(label) for label in samples["label"]]
    wrong = (samples["kind"] == "wrong").to_numpy()
    offsets = samples.groupby(["label", "kind"], sort=False).cumcount().to_numpy()
    correct_columns = int(offsets[~wrong].max() + 1) if (~wrong).any() else 0
    wrong_columns = int(offsets[wrong].max() + 1) if wrong.any() else 0
    columns = offsets + np.where(wrong, correct_columns, 0)
    cells = [(row, int(column)) for row, column in zip(rows, columns, strict=True)]
    return cells, correct_columns + wrong_columns


def _short_name(path: str, limit: int = NAME_LIMIT) -> str:
    """The last part of ``path``, its middle elided to fit ``limit`` characters."""
    name = Path(path).name
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[-(limit - 1 - head) :]}"
