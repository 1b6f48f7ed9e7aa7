"""The leakage, shown: one model trained on a source's own split (copies across its splits) and
on the curated split, their test figures side by side, and the leaky test images that are
copies of training images.

The two runs are tested on different images (that is the point), so their intervals are each
their own, not paired; the copies are found by ``curate dedupe``'s duplicate clusters in the
leaky run's split manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fracture_curate.errors import ConfigError
from fracture_curate.evaluation_tables import figure_text
from fracture_curate.manifest import read_manifest
from fracture_train.checkpoint import read_run_config
from fracture_train.compare import (
    FIGURES,
    read_test_predictions,
    score_test_split,
)
from fracture_train.intervals import DEFAULT_RESAMPLES, wilson_interval

#: The split manifest columns the copies are found with.
COPY_COLUMNS = ["path", "label", "split", "cluster_id", "match_kind"]


@dataclass(frozen=True)
class LeakageReport:
    """Both runs' test figures, and the copies each test split holds of its train split."""

    figures: pd.DataFrame  #: a row per figure, a column per run
    copies: pd.DataFrame  #: the leaky test images with a copy in train, and whether predicted right
    curated_copies: int  #: the same count on the curated split (0 when curation did its job)
    memorised: pd.DataFrame  #: the leaky run's accuracy on its copied test images and the rest


def cross_split_copies(split: pd.DataFrame, held_out: str = "test") -> pd.DataFrame:
    """The rows of ``held_out`` whose duplicate cluster has a row in train: ``path``, ``label``,
    ``copy_in_train`` (a train path of the same picture) and ``match_kind``."""
    used = split[split["split"].notna()]
    train = used[used["split"] == "train"].drop_duplicates("cluster_id")
    in_train = train.set_index("cluster_id")["path"]
    leaked = used[(used["split"] == held_out) & used["cluster_id"].isin(in_train.index)]
    return pd.DataFrame(
        {
            "path": leaked["path"],
            "label": leaked["label"],
            "copy_in_train": leaked["cluster_id"].map(in_train),
            "match_kind": leaked["match_kind"],
        }
    ).reset_index(drop=True)


def leakage_report(
    leaky_run: str | Path, curated_run: str | Path, resamples: int = DEFAULT_RESAMPLES
) -> LeakageReport:
    """Compare a run trained on a leaky split with one trained on the curated split."""
    runs = {
        "leaky split": read_test_predictions(leaky_run),
        "curated split": read_test_predictions(curated_run),
    }
    copies = {name: cross_split_copies(_split_manifest(run.run)) for name, run in runs.items()}
    columns = {}
    for name, run in runs.items():
        found = score_test_split(run, resamples)
        cells = {"run": str(run.run), "test images": str(found["n"])}
        for key, label in FIGURES.items():
            cells[label] = figure_text(found[key], found.get("intervals", {}).get(key))
        cells["test images copied from train"] = str(len(copies[name]))
        columns[name] = cells
    leaky = runs["leaky split"].frame
    right = pd.Series((leaky["label"] == leaky["predicted_label"]).to_numpy(), index=leaky["path"])
    leaked = copies["leaky split"].assign(
        predicted_right=lambda frame: frame["path"].map(right).astype("boolean")
    )
    figures = pd.DataFrame(columns)
    figures.index.name = "test"
    copied = leaky["path"].isin(leaked["path"]).to_numpy()
    memorised = pd.DataFrame(
        {
            part: _accuracy(right.to_numpy()[chosen])
            for part, chosen in (("copied from train", copied), ("the rest", ~copied))
        }
    ).T
    memorised.index.name = "leaky test images"
    return LeakageReport(figures, leaked, len(copies["curated split"]), memorised)


def _accuracy(right: np.ndarray) -> dict[str, str]:
    """How many of some independent predictions are right, with a Wilson interval."""
    bounds = list(wilson_interval(int(right.sum()), len(right)))
    share = right.mean() if len(right) else np.nan
    return {
        "images": str(len(right)),
        "right": str(int(right.sum())),
        "accuracy": figure_text(share, bounds),
    }


def _split_manifest(run: str | Path) -> pd.DataFrame:
    """The split manifest a run was trained on, read for its copies."""
    manifest = read_run_config(run).training.get("manifest")
    if manifest is None:
        raise ConfigError(f"{run}'s config.json does not name the manifest it was trained on")
    return read_manifest(manifest, stage="split", columns=COPY_COLUMNS)
