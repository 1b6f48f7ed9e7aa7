"""Rich rendering for the ``train`` command line: the per-epoch line and the metrics tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from fracture_curate.display import frame_table
from fracture_curate.evaluation_tables import metrics_frames, number_text


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
            f"{row['val_balanced_accuracy']:>5.3f} {number_text(row['val_auroc']):>5} "
            f"{row['lr']:>8.2e} {row['images_per_s']:>7.1f} {row['seconds']:>6.1f}"
        )
        if row["best"]:
            line.append(" *", style="bold green")
        self.console.print(line, highlight=False)


def metrics_tables(metrics: dict[str, Any], split: str) -> list[Table]:
    """The tables of one split's metrics, as
    :func:`~fracture_curate.evaluation_tables.metrics_frames` builds them."""
    return [frame_table(frame, title) for title, frame in metrics_frames(metrics, split)]


def absent_class_lines(metrics: dict[str, Any], split: str) -> list[str]:
    """Why a split's metrics read n/a: one line per class it holds no image of."""
    absent = [name for name, found in metrics[split]["per_class"].items() if not found["support"]]
    return [
        f"{split} holds no {name!r} image: the metrics that need it (AUROC, its sensitivity "
        "or specificity) are n/a; `curate split` says when a label has too few groups"
        for name in absent
    ]
