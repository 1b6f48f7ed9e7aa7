"""Runs compared on one test split: each run's figures with 95% intervals, and the difference in
AUROC from the first run by a paired bootstrap (the same patients drawn for every run).

Everything is read back from the run folders (``config.json`` and ``predictions.parquet``): no
model is loaded, and runs made on other machines compare as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fracture_curate.errors import ConfigError
from fracture_curate.evaluation_tables import figure_text
from fracture_curate.manifest import read_manifest
from fracture_curate.schema import PREDICT_STAGE, PREDICTIONS_FILE, probability_column
from fracture_train.checkpoint import read_run_config
from fracture_train.evaluate import independent_units
from fracture_train.intervals import (
    DEFAULT_RESAMPLES,
    paired_auroc_difference,
    percentile_interval,
)
from fracture_train.metrics import BOOTSTRAP_SEED, classification_metrics
from fracture_train.rows import OPTIONAL_COLUMNS

#: The figures of a comparison, by their key in ``classification_metrics``' result.
FIGURES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "auroc": "AUROC",
    "cohen_kappa": "Cohen's kappa",
}


@dataclass(frozen=True)
class RunPredictions:
    """A run's predictions on its test split, with what is needed to score them."""

    run: Path
    model: str
    class_names: list[str]
    positive_class: str | None
    val_threshold: float | None
    frame: pd.DataFrame  #: the test rows, sorted by path

    @property
    def probs(self) -> np.ndarray:
        return self.frame[[probability_column(name) for name in self.class_names]].to_numpy()

    @property
    def targets(self) -> np.ndarray:
        return self.frame["label"].map({n: i for i, n in enumerate(self.class_names)}).to_numpy()

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.class_names.index(self.positive_class)


def read_test_predictions(run: str | Path) -> RunPredictions:
    """A run folder's test predictions; a CurateError when it has none."""
    run = Path(run)
    config = read_run_config(run)
    predictions = read_manifest(run / PREDICTIONS_FILE, stage=PREDICT_STAGE)
    test = predictions[predictions["split"] == "test"].sort_values("path", ignore_index=True)
    for name, dtype in OPTIONAL_COLUMNS.items():  # a run of an earlier version lacks them
        if name not in test:
            test[name] = pd.Series(pd.NA, index=test.index, dtype=dtype)
    if test.empty:
        raise ConfigError(f"{run} has no test predictions (is it an evaluation of val only?)")
    return RunPredictions(
        run=run,
        model=config.model,
        class_names=config.class_names,
        positive_class=config.positive_class,
        val_threshold=config.val_threshold,
        frame=test,
    )


def score_test_split(run: RunPredictions, resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """A run's test figures with their 95% intervals, as its evaluation computes them."""
    return classification_metrics(
        run.targets,
        run.probs,
        run.class_names,
        positive=run.positive_index,
        extra_threshold=run.val_threshold,
        groups=independent_units(run.frame),
        resamples=resamples,
    )


def check_same_test_split(runs: list[RunPredictions]) -> None:
    """Runs compared must predict the same classes on the same test images with the same
    labels; a ConfigError in one line naming the first run that does not."""
    first = runs[0]
    for other in runs[1:]:
        if other.class_names != first.class_names:
            raise ConfigError(
                f"{other.run} predicts {other.class_names}, {first.run} {first.class_names}: "
                "runs of other classes cannot be compared"
            )
        mine = first.frame[["path", "image_id", "label"]]
        theirs = other.frame[["path", "image_id", "label"]]
        if not mine.equals(theirs):
            paths = set(mine["path"]) ^ set(theirs["path"])
            differ = f"{len(paths)} test image(s) differ" if paths else "the labels differ"
            raise ConfigError(
                f"{other.run} was tested on another test split than {first.run} ({differ}); "
                "compare runs trained on one split.parquet"
            )


def compare_runs(
    runs: list[str | Path], resamples: int = DEFAULT_RESAMPLES
) -> tuple[pd.DataFrame, str]:
    """Each run's test figures with 95% intervals (a column per run), and the AUROC difference
    from the first run with its paired-bootstrap interval (binary tasks); and a line on how the
    intervals were made."""
    if len(runs) < 2:
        raise ConfigError("give at least two run folders to compare")
    loaded = [read_test_predictions(run) for run in runs]
    check_same_test_split(loaded)
    first = loaded[0]
    groups = independent_units(first.frame)
    scores = [score_test_split(run, resamples) for run in loaded]
    columns = {}
    for run, found in zip(loaded, scores, strict=True):
        cells = {"model": run.model, "n": str(found["n"])}
        for key, label in FIGURES.items():
            cells[label] = figure_text(found[key], found.get("intervals", {}).get(key))
        for key in ("at_threshold", "at_val_threshold"):
            if key in found:
                where = f"@ {found[key]['threshold']:.3f}"
                bounds = found.get("intervals", {}).get(key, {})
                for rate in ("sensitivity", "specificity"):
                    cells[f"{rate} {where}" if key == "at_threshold" else f"{rate} @ val"] = (
                        figure_text(found[key][rate], bounds.get(rate))
                    )
        if run is not first and first.positive_index is not None and resamples:
            positive = first.positive_index
            spread = paired_auroc_difference(
                first.targets == positive,
                run.probs[:, positive],
                first.probs[:, positive],
                groups,
                n_resamples=resamples,
                seed=BOOTSTRAP_SEED,
            )
            difference = found["auroc"] - scores[0]["auroc"]
            cells[f"AUROC - {first.run.name}"] = figure_text(
                difference, list(percentile_interval(spread))
            )
        columns[str(run.run)] = cells
    table = pd.DataFrame(columns)
    table.index.name = "test"
    units = len(np.unique(groups))
    note = (
        f"95% intervals over {resamples:,} resamples of the {units:,} patients or groups of the "
        f"test split (seed {BOOTSTRAP_SEED}); the AUROC differences are paired: every run is "
        "scored on the same resamples"
    )
    return table.fillna(""), note
