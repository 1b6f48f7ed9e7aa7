"""Rich rendering for the ``train`` command line: the per-epoch line and the metrics tables."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from fracture_curate.display import frame_table


class EpochPrinter:
    """Prints one aligned line per epoch (a header first): losses, val metrics, learning rate,
    speed, and a star on the best epoch so far."""

    HEADER = (
        f"{'epoch':>7} {'loss':>7} {'acc':>5} {'v.loss':>7} {'v.acc':>5} {'v.bal':>5} "
        f"{'v.auc':>5} {'lr':>8} {'img/s':>7} {'sec':>6}"
    )

    def __init__(self, console: Any, epochs: int) -> None:
        self.console, self.epochs, self.started = console, epochs, False

    def __call__(self, row: dict[str, Any]) -> None:
        if not self.started:
            self.console.print(self.HEADER, style="bold", highlight=False)
            self.started = True
        epoch = f"{row['epoch']}/{self.epochs}"
        line = Text(
            f"{epoch:>7} {row['train_loss']:>7.4f} {row['train_accuracy']:>5.3f} "
            f"{row['val_loss']:>7.4f} {row['val_accuracy']:>5.3f} "
            f"{row['val_balanced_accuracy']:>5.3f} {_number(row['val_auroc']):>5} "
            f"{row['lr']:>8.2e} {row['images_per_s']:>7.1f} {row['seconds']:>6.1f}"
        )
        if row["best"]:
            line.append(" *", style="bold green")
        self.console.print(line, highlight=False)


def metrics_tables(metrics: dict[str, Any], split: str) -> list[Table]:
    """Summary (with 95% intervals where measured), per-class and confusion-matrix tables of
    one split's metrics, and the summary of its studies where it was scored per study."""
    found = metrics[split]
    binary = metrics["positive_class"] is not None
    tables = [
        frame_table(summary_frame(found, binary), f"{split} (n={found['n']})"),
        frame_table(_per_class_frame(found), f"{split}: per class (one-vs-rest)"),
    ]
    if "intervals" in found:
        title = f"{split}: per class, 95% intervals"
        tables.append(frame_table(_per_class_intervals(found["intervals"]), title))
    tables.append(frame_table(_confusion_frame(found), f"{split}: confusion matrix"))
    studies = found.get("per_study")
    if studies is not None:
        title = (
            f"{split} per study (n={studies['n']} studies of {studies['images']} images, "
            f"{studies['aggregate']} of their images' probabilities)"
        )
        tables.append(frame_table(summary_frame(studies, binary), title))
    return tables


def summary_frame(found: dict[str, Any], binary: bool) -> pd.DataFrame:
    """The headline figures of one evaluation, each with its 95% interval where measured."""
    intervals = found.get("intervals", {})
    rows: dict[str, tuple[Any, Any]] = {
        "accuracy": (found["accuracy"], intervals.get("accuracy")),
        "balanced accuracy": (found["balanced_accuracy"], intervals.get("balanced_accuracy")),
        "AUROC" + ("" if binary else " (macro one-vs-rest)"): (
            found["auroc"],
            intervals.get("auroc"),
        ),
        "Cohen's kappa": (found["cohen_kappa"], intervals.get("cohen_kappa")),
        "ECE (15 bins)": (found["ece"], None),
    }
    for key, label in (("at_threshold", "threshold"), ("at_val_threshold", "val threshold")):
        if key in found:
            rates, bounds = found[key], intervals.get(key, {})
            where = f"@ {label} {_number(rates['threshold'])}"
            rows[f"sensitivity {where}"] = (rates["sensitivity"], bounds.get("sensitivity"))
            rows[f"specificity {where}"] = (rates["specificity"], bounds.get("specificity"))
    frame = pd.DataFrame({"value": [_number(value) for value, _ in rows.values()]}, index=rows)
    if intervals:
        frame["95% CI"] = [_bounds(bounds) for _, bounds in rows.values()]
    frame.index.name = "metric"
    return frame


def interval_note(found: dict[str, Any]) -> str | None:
    """How one evaluation's intervals were made, in one line; None without intervals."""
    method = found.get("intervals", {}).get("method")
    if method is None:
        return None
    proportions = (
        "Wilson for proportions (the images are independent), bootstrap for the rest"
        if method["proportions"] == "wilson"
        else "Wilson for proportions on the images over the bootstrap's design effect (the "
        "images of a patient are not independent), bootstrap for the rest"
    )
    return (
        f"95% intervals: {proportions} ({method['resamples']:,} resamples of "
        f"{method['units']:,} patients or groups, seed {method['seed']})"
    )


def _per_class_frame(found: dict[str, Any]) -> pd.DataFrame:
    per_class = pd.DataFrame(found["per_class"]).T.drop(columns="recall")  # = sensitivity
    per_class["support"] = per_class["support"].astype(int)
    per_class = per_class.map(lambda v: v if isinstance(v, int) else _number(v))
    per_class.index.name = "class"
    return per_class


def _per_class_intervals(intervals: dict[str, Any]) -> pd.DataFrame:
    columns = {"precision": "precision", "recall": "sensitivity", "specificity": "specificity"}
    frame = pd.DataFrame(
        {
            shown: [_bounds(bounds[key]) for bounds in intervals["per_class"].values()]
            for key, shown in columns.items()
        },
        index=list(intervals["per_class"]),
    )
    frame.index.name = "class"
    return frame


def _confusion_frame(found: dict[str, Any]) -> pd.DataFrame:
    names = list(found["per_class"])
    confusion = pd.DataFrame(found["confusion_matrix"], index=names, columns=names)
    confusion.index.name = "true \\ predicted"
    return confusion


def absent_class_lines(metrics: dict[str, Any], split: str) -> list[str]:
    """Why a split's metrics read n/a: one line per class it holds no image of."""
    absent = [name for name, found in metrics[split]["per_class"].items() if not found["support"]]
    return [
        f"{split} holds no {name!r} image: the metrics that need it (AUROC, its sensitivity "
        "or specificity) are n/a; `curate split` says when a label has too few groups"
        for name in absent
    ]


def _bounds(bounds: list[float] | None) -> str:
    """An interval as "[0.612, 0.915]"; "n/a" when it is undefined, "" when none was measured."""
    if bounds is None:
        return ""
    low, high = bounds
    if any(value is None or math.isnan(value) for value in (low, high)):
        return "n/a"
    return f"[{low:.3f}, {high:.3f}]"


def _number(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )
