"""Labels from a dataset's folder layout (or an explicit CSV).

Supported layouts, detected automatically or forced by name:

- ``class``: ``ROOT/<class>/...``
- ``split-class``: ``ROOT/{train,val,test}/<class>/...`` (Bone Fracture Multi-Region)
- ``class-split``: ``ROOT/<class>/{Train,Test}/...`` (the "Bone Break Classification" set)
- ``mura``: ``.../XR_<REGION>/patient<ID>/study<N>_{positive,negative}/...`` (Stanford MURA)
- ``csv``: ``--labels FILE`` with columns ``path,label`` and optionally ``split,patient_id``
- ``none``: no labels (a flat folder)

Patient keys (``patient_id``, ``study_id``) come from MURA paths and the labels CSV, from a
``--patient-pattern`` regex, or from the file names of the public sets in
:data:`PATIENT_SCHEMES`, recognised automatically.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from fracture_curate.errors import ConfigError, CurateError

LAYOUTS = ("auto", "class", "split-class", "class-split", "mura", "csv", "none")
#: Where each folder layout reads labels from, in words.
LAYOUT_SHAPES = {
    "class": "ROOT/<class>/...",
    "split-class": "ROOT/<split>/<class>/...",
    "class-split": "ROOT/<class>/<split>/...",
    "mura": ".../XR_<REGION>/patient<ID>/study<N>_{positive,negative}/...",
    "none": "no folders (a flat folder, no labels)",
}

_SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
#: The study labels of the MURA layout (``study1_positive``).
MURA_LABELS = ("positive", "negative")
_MURA_PATTERN = re.compile(
    r"XR_(?P<region>[A-Za-z]+)/(?P<patient>patient\d+)/(?P<study>study\d+)_"
    rf"(?P<label>{'|'.join(MURA_LABELS)})/"
)


#: The named groups a ``--patient-pattern`` may have; ``patient`` is required.
PATIENT_GROUPS = ("patient", "study")


@dataclass(frozen=True)
class PatientScheme:
    """A public data set's file-naming scheme that names the patient (and maybe the study).

    ``patterns`` are searched in a file's relative POSIX path, first match wins; each has a
    named group ``patient`` and may have ``study``.
    """

    key: str  #: the scheme's name in the scan manifest's params (``patient_sources``)
    name: str  #: in words, for the scan summary: "Kermany naming"
    patterns: tuple[re.Pattern[str], ...]

    def keys(self, path: str) -> tuple[str, str | None] | None:
        """``(patient_id, study_id)`` of ``path``, or None when the scheme does not name it."""
        for pattern in self.patterns:
            keys = patient_keys(pattern, path)
            if keys is not None:
                return keys
        return None


#: Known public naming schemes, tried on every scan unless switched off (``--no-auto-patients``).
#: Each is anchored on the file name (and, for CheXpert, its two folders), so an unrelated set
#: matches by accident only if its names copy the scheme. MURA is read by its layout instead.
PATIENT_SCHEMES: tuple[PatientScheme, ...] = (
    PatientScheme(
        key="kermany",
        name="Kermany naming",
        patterns=(
            # Pneumonia files: person1946_bacteria_4874.jpeg -> person1946.
            re.compile(r"(?:^|/)(?P<patient>person\d+)_(?:bacteria|virus)_\d+\.\w+$"),
            # NORMAL files: IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg. The set says nothing
            # about them; the usual reading, which the community follows, takes the middle
            # number as the patient (IM-0115, NORMAL2-IM-1427) and the last as the image.
            re.compile(r"(?:^|/)(?P<patient>(?:NORMAL\d*-)?IM-\d+)(?:-\d+)+\.\w+$"),
        ),
    ),
    PatientScheme(
        key="nih-chestxray14",
        name="NIH ChestX-ray14 naming",
        # 00000001_000.png: an 8-digit patient, then a 3-digit follow-up index (one visit).
        patterns=(re.compile(r"(?:^|/)(?P<patient>\d{8})_(?P<study>\d{3})\.\w+$"),),
    ),
    PatientScheme(
        key="chexpert",
        name="CheXpert naming",
        # patient00001/study1/view1_frontal.jpg; MURA's study folders (study1_positive) differ.
        patterns=(
            re.compile(r"(?:^|/)(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_\w+\.\w+$"),
        ),
    ),
)


def compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    """A ``--patient-pattern`` compiled, or a ConfigError saying what is wrong with it."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        where = f" at position {error.pos}" if error.pos is not None else ""
        raise ConfigError(
            f"--patient-pattern {pattern!r} is not a valid regular expression: {error.msg}{where}"
        ) from error
    if "patient" not in compiled.groupindex:
        raise ConfigError(
            f"--patient-pattern {pattern!r} has no (?P<patient>...) group; name the part of "
            "the path that identifies the patient, e.g. '(?P<patient>P\\d+)/'"
        )
    others = sorted(set(compiled.groupindex) - set(PATIENT_GROUPS))
    if others:
        raise ConfigError(
            f"--patient-pattern {pattern!r} has named group(s) {', '.join(others)}; only "
            f"{' and '.join(PATIENT_GROUPS)} are read (use (?:...) for other groups)"
        )
    return compiled


def patient_keys(pattern: re.Pattern[str], path: str) -> tuple[str, str | None] | None:
    """``(patient_id, study_id)`` that ``pattern`` finds in ``path`` (``re.search``), or None.

    A study is numbered within its patient, so its id is made unique as ``patient/study``, as
    the MURA layout does; an empty ``patient`` is no match.
    """
    match = pattern.search(path)
    if match is None or not match["patient"]:
        return None
    study = match.groupdict().get("study")
    return match["patient"], f"{match['patient']}/{study}" if study else None


class LayoutError(CurateError):
    """A layout that cannot be applied to the dataset (bad CSV, unknown layout name)."""


@dataclass(frozen=True)
class FileLabels:
    """What the layout says about one file; ``None`` where it says nothing."""

    label: str | None = None
    source_split: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    body_region: str | None = None


def normalise_split(name: str) -> str | None:
    """Map ``Train``, ``valid``, ``Testing``... to ``train``/``val``/``test``; else ``None``."""
    return _SPLIT_SYNONYMS.get(name.strip().lower())


def detect_layout(paths: list[str]) -> str:
    """Guess the layout from relative POSIX paths by a majority vote over the files."""
    return layout_votes(paths).most_common(1)[0][0] if paths else "none"


def layout_votes(paths: Iterable[str]) -> Counter[str]:
    """How many of ``paths`` (relative, POSIX) fit each folder layout best."""
    votes: Counter[str] = Counter()
    for path in paths:
        parts = PurePosixPath(path).parts[:-1]
        if _MURA_PATTERN.search(path + "/" if not parts else path):
            votes["mura"] += 1
        elif len(parts) >= 2 and normalise_split(parts[0]):
            votes["split-class"] += 1
        elif len(parts) >= 2 and normalise_split(parts[1]):
            votes["class-split"] += 1
        elif len(parts) >= 1:
            votes["class"] += 1
        else:
            votes["none"] += 1
    return votes


def labels_from_path(path: str, layout: str) -> FileLabels:
    """The labels a folder layout gives one relative path."""
    parts = PurePosixPath(path).parts[:-1]
    if layout == "class":
        return FileLabels(label=parts[0] if parts else None)
    if layout == "split-class":
        split = normalise_split(parts[0]) if parts else None
        if split is None:
            return FileLabels(label=parts[0] if parts else None)
        return FileLabels(label=parts[1] if len(parts) >= 2 else None, source_split=split)
    if layout == "class-split":
        split = normalise_split(parts[1]) if len(parts) >= 2 else None
        return FileLabels(label=parts[0] if parts else None, source_split=split)
    if layout == "mura":
        match = _MURA_PATTERN.search(path)
        if match is None:
            return FileLabels()
        prefix = path[: match.start()].strip("/")
        split = next((normalise_split(p) for p in prefix.split("/") if normalise_split(p)), None)
        return FileLabels(
            label=match["label"],
            source_split=split,
            patient_id=match["patient"],
            study_id=f"{match['patient']}/{match['study']}",
            body_region=match["region"].upper(),
        )
    if layout == "none":
        return FileLabels()
    raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def layout_folder(
    layout: str,
    label: str,
    split: str | None = None,
    *,
    region: str | None = None,
    patient: str | None = None,
    study: str | None = None,
) -> PurePosixPath:
    """The folder a file of ``label`` (in the source split folder ``split``) sits in under a
    folder layout: the inverse of :func:`labels_from_path`.

    ``split`` is the folder name as written (``Train``, ``valid``); the mura layout also needs
    the body ``region`` (``WRIST``), the ``patient`` folder and the ``study`` (``study1``).
    """
    if layout == "class":
        return PurePosixPath(label)
    if layout in ("split-class", "class-split") and split is None:
        raise LayoutError(f"layout {layout!r} needs a split folder")
    if layout == "split-class":
        return PurePosixPath(split, label)
    if layout == "class-split":
        return PurePosixPath(label, split)
    if layout == "mura":
        if None in (split, region, patient, study):
            raise LayoutError("layout 'mura' needs a split, region, patient and study")
        return PurePosixPath(split, f"XR_{region}", patient, f"{study}_{label}")
    raise LayoutError(
        f"layout {layout!r} does not place files by label; choose one of "
        "class, split-class, class-split, mura"
    )


def read_label_csv(csv_path: str | Path) -> dict[str, FileLabels]:
    """Labels from a CSV with columns ``path,label`` and optionally ``split,patient_id``.

    Paths are relative to the dataset root, in POSIX form.
    """
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LayoutError(f"cannot read labels CSV {csv_path}: {error}") from error
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise LayoutError(
            f"labels CSV {csv_path} lacks column(s) {', '.join(sorted(missing))}; "
            "it needs path,label and may have split,patient_id,study_id,body_region"
        )
    duplicated = table["path"][table["path"].duplicated()]
    if not duplicated.empty:
        raise LayoutError(f"labels CSV {csv_path} lists {duplicated.iloc[0]!r} more than once")

    def cell(row: pd.Series, column: str) -> str | None:
        value = row.get(column, "")
        return value if value else None

    labels = {}
    for _, row in table.iterrows():
        split = cell(row, "split")
        labels[PurePosixPath(row["path"]).as_posix()] = FileLabels(
            label=cell(row, "label"),
            source_split=normalise_split(split) or split if split else None,
            patient_id=cell(row, "patient_id"),
            study_id=cell(row, "study_id"),
            body_region=cell(row, "body_region"),
        )
    return labels


#: A CSV is a table of the set's images when at least this share of its rows names one of them.
TABLE_SHARE = 0.5
#: A CSV larger than this is not read for evidence (a labels CSV of a million rows is smaller).
MAX_TABLE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ImageTable:
    """A CSV in the dataset that names the dataset's files: a labels CSV (FracAtlas), a list of
    image paths (MURA), ``curate synth``'s record."""

    path: str  #: relative to the dataset root, POSIX
    rows: int  #: rows, a header included
    named: int  #: rows with a cell that names a file of the set


def _tails(path: str) -> Iterator[str]:
    """``a/b/c.png``, ``b/c.png`` and ``c.png``: the trailing parts of a path."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    for start in range(len(parts)):
        yield "/".join(parts[start:])


def find_image_tables(root: Path, paths: Iterable[str]) -> list[ImageTable]:
    """The CSV files among ``paths`` (relative to ``root``) whose rows mostly name other files
    among ``paths``.

    A cell names a file when one of its trailing parts (``a/b/c.png``, ``b/c.png``, ``c.png``)
    is a listed path or a listed file's name: tables often write paths from another folder, or
    bare file names. Two strings per file, so a million files cost two million set entries.
    """
    paths = list(paths)
    candidates = {path for path in paths if PurePosixPath(path).suffix.lower() == ".csv"}
    if not candidates:
        return []
    others = [path for path in paths if path not in candidates]
    known = set(others) | {PurePosixPath(path).name for path in others}
    tables = []
    for path in sorted(candidates):
        try:
            if (root / path).stat().st_size > MAX_TABLE_BYTES:
                continue
            with open(root / path, newline="", encoding="utf-8", errors="replace") as handle:
                rows = [row for row in csv.reader(handle) if row]
        except (OSError, csv.Error):
            continue  # the scan records what is wrong with the file
        named = sum(
            any(tail in known for cell in row if cell.strip() for tail in _tails(cell.strip()))
            for row in rows
        )
        if rows and named >= TABLE_SHARE * len(rows):
            tables.append(ImageTable(path=path, rows=len(rows), named=named))
    return tables


@dataclass(frozen=True)
class LayoutChoice:
    """The layout labels are read with, and why."""

    layout: str
    how: str  #: "detected", "forced" (--layout) or "labels CSV" (--labels)
    fitting: int = 0  #: files whose paths fit the layout best (when detected)
    files: int = 0  #: files the detection looked at

    def explain(self) -> str:
        """Why this layout, in a line: "class, detected: 412 of 420 files fit ROOT/<class>/..."."""
        if self.how == "labels CSV":
            return "csv, labels from the labels CSV (--labels)"
        shape = LAYOUT_SHAPES.get(self.layout, self.layout)
        if self.how == "forced":
            return f"{self.layout}, as forced with --layout: {shape}"
        return (
            f"{self.layout}, detected: {self.fitting:,} of {self.files:,} files fit {shape} "
            "(--layout forces another)"
        )


def choose_layout(layout: str, paths: list[str], *, labels_csv: bool) -> LayoutChoice:
    """The layout to read ``paths`` with: the labels CSV's, the one forced, or the one most
    paths fit (``layout == "auto"``)."""
    if labels_csv:
        return LayoutChoice("csv", "labels CSV")
    if layout != "auto":
        return LayoutChoice(layout, "forced")
    votes = layout_votes(paths)
    best, fitting = votes.most_common(1)[0] if votes else ("none", 0)
    return LayoutChoice(best, "detected", fitting, len(paths))


def label_warnings(labels: pd.Series, layout: str) -> list[str]:
    """What the labels a layout gave the kept images say against it: images it gives no
    label, or a single class (a classifier needs two)."""
    if layout == "none" or labels.empty:
        return []
    warnings = []
    missing = int(labels.isna().sum())
    if missing:
        why = (
            "are not in the labels CSV"
            if layout == "csv"
            else f"do not fit {LAYOUT_SHAPES.get(layout, layout)}"
        )
        warnings.append(
            f"{missing:,} of {len(labels):,} kept images get no label from the {layout} "
            f"layout: their paths {why}; the split leaves them out (no_label)"
        )
    classes = labels.dropna().unique()
    if len(classes) == 1:
        warnings.append(
            f"one class only ({classes[0]!r}): a classifier needs two or more; "
            "is this the right layout (--layout, --labels)?"
        )
    return warnings


def check_detected_layout(
    choice: LayoutChoice, labels: pd.Series, tables: list[ImageTable], root: Path
) -> None:
    """Refuse a detected layout that the dataset argues against: its folders give no labels,
    one class, or none to most files, while a CSV in the dataset names its images (a labels
    CSV not passed with --labels). ``labels`` are those the layout gives the listed files."""
    if choice.how != "detected" or not tables:
        return
    classes = labels.dropna().nunique()
    if classes >= 2 and labels.isna().mean() < 0.5:
        return
    folders = (
        "no labels" if classes == 0 else "one class" if classes == 1 else "no label to most files"
    )
    table = max(tables, key=lambda found: found.named)
    raise LayoutError(
        f"the folders ({choice.layout} layout) give {folders}, and {table.path} names "
        f"{table.named:,} of the files: pass it with --labels {root / table.path} (columns "
        "path,label), or --layout to read the folders anyway"
    )
