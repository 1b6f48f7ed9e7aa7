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
    """Summary, per-class and confusion-matrix tables of one split's metrics."""
    found = metrics[split]
    n = found["n"]
    summary = {
        "accuracy": found["accuracy"],
        "balanced accuracy": found["balanced_accuracy"],
        "AUROC" + (" (macro one-vs-rest)" if metrics["positive_class"] is None else ""): found[
            "auroc"
        ],
        "Cohen's kappa": found["cohen_kappa"],
        "ECE (15 bins)": found["ece"],
    }
    for key, label in (("at_threshold", "threshold"), ("at_val_threshold", "val threshold")):
        if key in found:
            rates = found[key]
            where = f"@ {label} {_number(rates['threshold'])}"
            summary[f"sensitivity {where}"] = rates["sensitivity"]
            summary[f"specificity {where}"] = rates["specificity"]
    frame = pd.DataFrame({"value": [_number(v) for v in summary.values()]}, index=summary)
    frame.index.name = "metric"
    per_class = pd.DataFrame(found["per_class"]).T.drop(columns="recall")  # = sensitivity
    per_class["support"] = per_class["support"].astype(int)
    per_class = per_class.map(lambda v: v if isinstance(v, int) else _number(v))
    per_class.index.name = "class"
    names = list(found["per_class"])
    confusion = pd.DataFrame(found["confusion_matrix"], index=names, columns=names)
    confusion.index.name = "true \\ predicted"
    return [
        frame_table(frame, f"{split} (n={n})"),
        frame_table(per_class, f"{split}: per class (one-vs-rest)"),
        frame_table(confusion, f"{split}: confusion matrix"),
    ]


def absent_class_lines(metrics: dict[str, Any], split: str) -> list[str]:
    """Why a split's metrics read n/a: one line per class it holds no image of."""
    absent = [name for name, found in metrics[split]["per_class"].items() if not found["support"]]
    return [
        f"{split} holds no {name!r} image: the metrics that need it (AUROC, its sensitivity "
        "or specificity) are n/a; `curate split` says when a label has too few groups"
        for name in absent
    ]


def _number(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )
