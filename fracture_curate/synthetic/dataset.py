"""Generating a dataset: checks the arguments, writes the originals, plants, saves the record."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from fracture_curate.errors import ConfigError
from fracture_curate.layouts import MURA_LABELS
from fracture_curate.synthetic.drawing import draw_class_phantom, image_shape
from fracture_curate.synthetic.planting import plant_all
from fracture_curate.synthetic.record import (
    LABELS_CSV,
    PLANTED_CSV,
    PLANTED_KINDS,
    RECORD_COLUMNS,
    RecordEntry,
    record_frame,
    write_csv,
)
from fracture_curate.synthetic.writer import (
    GENERATED_LAYOUTS,
    LAYOUT_SPLITS,
    DatasetWriter,
    encode,
    format_detail,
)

MURA_REGIONS = ("WRIST", "ELBOW", "HAND", "SHOULDER", "FINGER", "FOREARM", "HUMERUS")


def generate_dataset(
    root: Path,
    *,
    layout: str = "split-class",
    classes: Sequence[str] = ("fractured", "not fractured"),
    n_per_class: int = 20,
    image_size: int | tuple[int, int] = 256,
    png_fraction: float = 0.3,
    plant: bool = True,
    plant_counts: Mapping[str, int] | None = None,
    cross_split: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Write a synthetic dataset under ``root`` and return its record (also ``root/planted.csv``).

    One record row per file written, with columns RECORD_COLUMNS. ``plant_counts``, when given,
    is the full number of planted files per kind (missing kinds: none); by default every kind
    that makes sense for the layout is planted max(1, n_originals // 20) times. ``cross_split``
    sets the number of copies planted in another split than their original's, over either
    (the leak that audits of public sets found: ``make leakage``). Output is
    deterministic for a given seed. Raises ConfigError for an invalid argument, and
    FileExistsError if ``root`` holds files but no planted.csv (a previously generated set is
    deleted and regenerated).
    """
    root = Path(root)
    _check_args(layout, classes, n_per_class, image_size, png_fraction, plant_counts)
    if cross_split is not None and cross_split < 0:
        raise ConfigError(f"--cross-split must be 0 or more; got {cross_split}")
    _prepare_root(root)
    writer = DatasetWriter(
        root, layout, classes, image_size, png_fraction, np.random.default_rng(seed)
    )
    if layout == "mura":
        _write_mura_originals(writer, n_per_class)
    else:
        _write_originals(writer, n_per_class)

    if plant:
        if plant_counts is None:
            counts = dict.fromkeys(PLANTED_KINDS, max(1, len(writer.entries) // 20))
        else:
            counts = {kind: int(plant_counts.get(kind, 0)) for kind in PLANTED_KINDS}
        if cross_split is not None:
            counts["cross_split"] = cross_split
        plant_all(writer, counts)

    if layout == "mura":
        _renumber_mura(writer)
    record = record_frame(writer.entries)
    if layout == "csv":
        write_csv(record[["path", "label", "split", "patient_id"]], root / LABELS_CSV)
    write_csv(record, root / PLANTED_CSV)
    return record


def _check_args(
    layout: str,
    classes: Sequence[str],
    n_per_class: int,
    image_size: int | tuple[int, int],
    png_fraction: float,
    plant_counts: Mapping[str, int] | None,
) -> None:
    """Raise ConfigError, naming what is allowed, for the first invalid argument."""
    if layout not in GENERATED_LAYOUTS:
        raise ConfigError(
            f"unknown layout {layout!r}; choose one of {', '.join(GENERATED_LAYOUTS)}"
        )
    if isinstance(classes, str) or not classes:
        raise ConfigError("classes must be a non-empty sequence of class names")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"class names must be unique: {list(classes)}")
    for name in classes:
        if not name or name.strip() != name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(
                f"invalid class folder name {name!r}: a class needs a non-empty folder name "
                "without '/' or '\\', without leading or trailing spaces, other than '.' or '..'"
            )
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be at least 1, got {n_per_class}")
    image_shape(image_size)
    if not 0.0 <= png_fraction <= 1.0:
        raise ConfigError(f"png_fraction must be within [0, 1], got {png_fraction}")
    unknown = set(plant_counts or {}) - set(PLANTED_KINDS)
    if unknown:
        raise ConfigError(
            f"unknown planted kinds {sorted(unknown)}; choose from {', '.join(PLANTED_KINDS)}"
        )
    negative = {kind: count for kind, count in (plant_counts or {}).items() if int(count) < 0}
    if negative:
        raise ConfigError(f"plant_counts must be 0 or more, got {negative}")


def _prepare_root(root: Path) -> None:
    """Create ``root``, or empty it if it holds a previously generated set; refuse otherwise."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not (root / PLANTED_CSV).is_file():
            raise FileExistsError(
                f"{root} is not empty and has no {PLANTED_CSV}, so it is not a generated "
                "synthetic dataset; refusing to overwrite it (choose an empty or new folder)"
            )
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    root.mkdir(parents=True, exist_ok=True)
    # Mark the folder as generated at once, so an interrupted run can be regenerated.
    write_csv(pd.DataFrame(columns=list(RECORD_COLUMNS)), root / PLANTED_CSV)


def _write_originals(writer: DatasetWriter, n_per_class: int) -> None:
    """Write the originals of every layout but mura (csv: patients of 1-3 images)."""
    n_total = n_per_class * len(writer.classes)
    png = np.zeros(n_total, dtype=bool)
    png[: round(writer.png_fraction * n_total)] = True
    writer.rng.shuffle(png)
    split_names, fractions = LAYOUT_SPLITS[writer.layout]
    index = 0
    for label in writer.classes:
        for split, count in zip(split_names, _split_counts(n_per_class, fractions), strict=True):
            patient, images_left = None, 0
            for _ in range(count):
                if writer.layout == "csv" and images_left == 0:
                    patient, images_left = writer.new_patient(), int(writer.rng.integers(1, 4))
                images_left -= 1
                folder = writer.folder(label, split)
                _write_original(writer, folder, label, split, png=bool(png[index]), patient=patient)
                index += 1


def _write_mura_originals(writer: DatasetWriter, n_per_label: int) -> None:
    """Patients with 1-3 studies of 1-3 images until each label has n_per_label images."""
    need = dict.fromkeys(MURA_LABELS, n_per_label)
    (first, second), (first_share, _) = LAYOUT_SPLITS["mura"]
    while any(need.values()):
        split = first if writer.rng.uniform() < first_share else second
        region = str(writer.rng.choice(MURA_REGIONS))
        patient = writer.new_patient()
        for _ in range(int(writer.rng.integers(1, 4))):
            open_labels = [label for label in MURA_LABELS if need[label]]
            if not open_labels:
                break
            label = str(writer.rng.choice(open_labels))
            folder = writer.new_study_folder(split, region, patient, label)
            for _ in range(min(int(writer.rng.integers(1, 4)), need[label])):
                _write_original(
                    writer, folder, label, split, png=True, patient=patient, region=region
                )
                need[label] -= 1


def _write_original(
    writer: DatasetWriter,
    folder: PurePosixPath,
    label: str,
    split: str | None,
    *,
    png: bool,
    patient: str | None = None,
    region: str | None = None,
) -> None:
    """Draw a phantom of class ``label`` and write it, as PNG or as JPEG, into ``folder``."""
    image, drawn = draw_class_phantom(writer.rng, writer.size, label)
    file_format, quality = writer.choose_format(png)
    entry = RecordEntry(
        path="",
        kind="original",
        label=label,
        true_label=label,
        split=split,
        patient_id=patient,
        detail=f"{drawn};{format_detail(file_format, quality)}",
        file_format=file_format,
        quality=quality,
        region=region,
    )
    writer.write(folder, encode(image, file_format, quality), entry)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items by fractions (largest remainder), each part >= 1 when n allows."""
    raw = [n * fraction for fraction in fractions]
    counts = [int(share) for share in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(counts):
        for i, count in enumerate(counts):
            if count == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return counts


def _renumber_mura(writer: DatasetWriter) -> None:
    """Name the files of each study image1..K in random order, so the planted files added
    to a study cannot be told from its originals by their number."""
    by_study: dict[str, list[RecordEntry]] = {}
    for entry in writer.entries:
        by_study.setdefault(PurePosixPath(entry.path).parent.as_posix(), []).append(entry)
    renamed: dict[str, str] = {}
    for study, entries in by_study.items():
        order = writer.rng.permutation(len(entries))
        for number, i in enumerate(order, start=1):
            entry = entries[i]
            new_path = f"{study}/image{number}{PurePosixPath(entry.path).suffix}"
            (writer.root / entry.path).rename(writer.root / new_path)
            renamed[entry.path] = new_path
    for entry in writer.entries:
        entry.path = renamed[entry.path]
        if entry.source_path is not None:
            entry.source_path = renamed[entry.source_path]
