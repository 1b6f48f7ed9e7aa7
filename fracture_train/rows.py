"""The rows a trainer can use: a split manifest checked for training or evaluation, with each
row's class index.

Everything that would stop a run is checked here, before any image is decoded: the columns and
splits, labels, the classes in train and val, and that every file is still there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fracture_curate.classes import FINDING, NORMAL, class_reading, positive_class
from fracture_curate.dataset_files import ScannedFile, scanned_files
from fracture_curate.dicom import Window
from fracture_curate.errors import CurateError
from fracture_curate.manifest import (
    check_manifest,
    dataset_root,
    read_provenance,
    recorded_window,
)
from fracture_curate.schema import SPLITS

#: The columns of a split manifest that training reads.
REQUIRED_COLUMNS = ("image_id", "path", "bytes", "label", "split", "status")
#: Read where present (a split written by hand may lack them): without ``group_id`` each image
#: is its own unit of the bootstrap, without ``study_id`` no study is scored.
OPTIONAL_COLUMNS = {"group_id": "Int64", "study_id": "string"}


class DataError(CurateError):
    """A manifest or image set the trainer cannot use; the message says what to fix."""


@dataclass(frozen=True)
class Rows:
    """The usable rows of a manifest: ``image_id, path, bytes, label, split, group_id,
    study_id, target`` (class index). ``group_id`` joins the rows that are not independent
    (one patient, copies, related films): the units a bootstrap resamples."""

    frame: pd.DataFrame
    root: Path
    window: Window  #: the one the manifest's scan decoded DICOM files with
    class_names: list[str]
    positive_class: str | None  #: the fracture class of a binary task; None for several classes
    label_map: dict[str, str] = field(default_factory=dict)  #: manifest label -> model class

    def files(self, window: Window | None = None) -> list[ScannedFile]:
        """The rows' files, to be decoded as the manifest's scan decoded them (``window``: as
        another run was trained instead)."""
        return scanned_files(self.frame, self.root, self.window if window is None else window)

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class (binary tasks), else None."""
        return None if self.positive_class is None else self.class_names.index(self.positive_class)

    def split(self, name: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.frame["split"].to_numpy() == name)


def class_order(labels: Sequence[str]) -> tuple[list[str], str | None]:
    """Class names in model order, and the positive class when there are exactly two.

    Binary order is ``[negative, positive]``, the positive class chosen by the project's class
    rule (:func:`fracture_curate.classes.positive_class`). Several classes are sorted.
    """
    names = sorted(set(labels))
    positive = positive_class(names)
    if positive is None:
        return names, None
    return [name for name in names if name != positive] + [positive], positive


def load_training_rows(manifest: str | Path, root: str | Path | None = None) -> Rows:
    """Check a split manifest for training and return its rows.

    Needs train, val and test rows, every class in train, both classes in val for a binary
    task (the threshold and AUROC are chosen there), and every image file present.
    """
    frame, root, window = _read_usable(manifest, root)
    counts = frame.groupby(["split", "label"]).size()
    for split in SPLITS:
        if split not in counts.index.get_level_values("split"):
            raise DataError(
                f"{manifest} has no {split} rows; the trainer needs train, val and test splits"
            )
    train_labels = set(counts["train"].index)
    absent = sorted(set(frame["label"]) - train_labels)
    if absent:
        raise DataError(
            f"class(es) {', '.join(map(repr, absent))} have no train rows in {manifest}"
        )
    if len(train_labels) < 2:
        raise DataError(f"{manifest} has a single class ({next(iter(train_labels))!r}) in train")
    class_names, positive = class_order(list(train_labels))
    if positive is not None and len(counts["val"]) < 2:
        raise DataError(
            f"the val split of {manifest} has only {counts['val'].index[0]!r}; a binary task "
            "needs both classes in val to choose the checkpoint and the threshold"
        )
    _check_files(frame, root)
    return _rows(frame, root, window, class_names, positive, {})


def load_evaluation_rows(
    manifest: str | Path,
    class_names: list[str],
    positive_class: str | None,
    *,
    root: str | Path | None = None,
    split: str | None = None,
) -> Rows:
    """Check a curated manifest for evaluating a trained model; ``split`` None takes every split.

    Labels must be the model's classes; for a binary model, two labels that read as one finding
    and one normal (``positive``/``negative``, ``abnormal``/``normal``) are mapped onto its
    classes, so a model trained on one dataset can be evaluated on another.
    """
    frame, root, window = _read_usable(manifest, root)
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise DataError(f"{manifest} has no {split} rows")
    labels = sorted(set(frame["label"]))
    label_map = {label: label for label in labels}
    unknown = [label for label in labels if label not in class_names]
    if unknown:
        label_map = _binary_label_map(labels, class_names, positive_class)
        if not label_map:
            raise DataError(
                f"{manifest} has label(s) {', '.join(map(repr, unknown))} that the model does not "
                f"know; its classes are {', '.join(map(repr, class_names))}"
            )
        frame = frame.assign(label=frame["label"].map(label_map))
    _check_files(frame, root)
    mapped = {key: value for key, value in label_map.items() if key != value}
    return _rows(frame, root, window, class_names, positive_class, mapped)


def _read_usable(
    manifest: str | Path, root: str | Path | None
) -> tuple[pd.DataFrame, Path, Window]:
    """The rows with a split, checked for columns, status, labels; the dataset folder, and the
    window its DICOM files were scanned with."""
    check_manifest(manifest, stage="split", columns=list(REQUIRED_COLUMNS))
    stored = pq.read_schema(manifest).names
    present = [name for name in OPTIONAL_COLUMNS if name in stored]
    frame = pd.read_parquet(manifest, columns=[*REQUIRED_COLUMNS, *present])
    frame = frame.reindex(columns=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]).astype(OPTIONAL_COLUMNS)
    frame = frame[frame["split"].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{manifest} has no rows with a split")
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise DataError(f"{manifest} has unknown split value(s): {', '.join(map(repr, unknown))}")
    unusable = frame[frame["status"] != "ok"]
    if len(unusable):
        first = unusable.iloc[0]
        raise DataError(
            f"{len(unusable)} row(s) of {manifest} have a split but status other than 'ok', "
            f"e.g. {first['path']} ({first['status']})"
        )
    if frame["label"].isna().any():
        first = frame[frame["label"].isna()].iloc[0]
        raise DataError(
            f"{int(frame['label'].isna().sum())} row(s) of {manifest} with a split have no "
            f"label, e.g. {first['path']}"
        )
    provenance = read_provenance(manifest)
    root = dataset_root(provenance, root)
    columns = ["image_id", "path", "bytes", "label", "split", "group_id", "study_id"]
    return frame[columns].astype({"label": str, "split": str}), root, recorded_window(provenance)


def _check_files(frame: pd.DataFrame, root: Path) -> None:
    missing = [path for path in frame["path"] if not (root / path).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) listed in the manifest no longer exist under {root}, "
            f"e.g. {missing[0]}; re-run `curate scan` or pass --root"
        )


def _binary_label_map(
    labels: list[str], class_names: list[str], positive_class: str | None
) -> dict[str, str]:
    """Map two labels that read as one finding and one normal (the project's class rule) onto a
    binary model's classes; empty when that fails."""
    readings = {label: class_reading(label) for label in labels}
    if positive_class is None or sorted(readings.values()) != [FINDING, NORMAL]:
        return {}
    negative_class = next(name for name in class_names if name != positive_class)
    return {
        label: negative_class if reading == NORMAL else positive_class
        for label, reading in readings.items()
    }


def _rows(
    frame: pd.DataFrame,
    root: Path,
    window: Window,
    class_names: list[str],
    positive: str | None,
    label_map: dict[str, str],
) -> Rows:
    index = {name: i for i, name in enumerate(class_names)}
    frame = frame.reset_index(drop=True).assign(target=frame["label"].map(index).to_numpy())
    return Rows(frame, root, window, class_names, positive, label_map)
