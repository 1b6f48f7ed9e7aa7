"""The planted record: what each generated file is (``planted.csv``), and what a run found of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fracture_curate.manifest import atomic_path
from fracture_curate.schema import flags

PLANTED_KINDS: tuple[str, ...] = (
    "exact_copy",
    "reencoded",
    "resized",
    "cropped",
    "flipped",
    "rotated90",
    "rotated_small",
    "brightness",
    "other_class",
    "cross_split",
    "outlier",
    "follow_up",
    "gif",
    "webp",
    "corrupt",
    "truncated",
    "zero_byte",
)
#: Planted kinds that are copies of an original: a duplicate detector should find each of them.
DUPLICATE_KINDS: tuple[str, ...] = PLANTED_KINDS[: PLANTED_KINDS.index("outlier")]
#: Planted kinds that copy or transform an original (their record has a source_path).
SOURCED_KINDS = frozenset({*DUPLICATE_KINDS, "follow_up", "truncated"})
#: Planted kinds that are other films of an original's anatomy: related, to be kept and grouped.
RELATED_KINDS = frozenset({"follow_up"})
#: Planted kinds that the scan finds: their status is not "ok".
STATUS_KINDS = frozenset({"gif", "webp", "corrupt", "truncated", "zero_byte"})
RECORD_COLUMNS: tuple[str, ...] = (
    "path",
    "kind",
    "source_path",
    "label",
    "true_label",
    "split",
    "patient_id",
    "detail",
)
PLANTED_CSV = "planted.csv"  #: the record of every file generated, in the dataset root
LABELS_CSV = "labels.csv"  #: the csv layout's labels, in the dataset root


@dataclass
class RecordEntry:
    """One file written: its row of ``planted.csv``, plus what is needed to derive copies."""

    path: str
    kind: str
    label: str
    true_label: str | None
    split: str | None = None
    patient_id: str | None = None
    detail: str = ""
    source_path: str | None = None
    file_format: str = "PNG"  # Pillow's name: PNG, JPEG, GIF, WEBP
    quality: int | None = None  # JPEG quality
    region: str | None = None  # body region, mura only

    def record(self) -> dict[str, str | None]:
        """The row of ``planted.csv``."""
        return {column: getattr(self, column) for column in RECORD_COLUMNS}


def record_frame(entries: list[RecordEntry]) -> pd.DataFrame:
    """The record of ``entries``: one row per file, with columns RECORD_COLUMNS."""
    return pd.DataFrame([entry.record() for entry in entries], columns=list(RECORD_COLUMNS))


def read_record(root: str | Path) -> pd.DataFrame:
    """The record of a generated set: ``root/planted.csv``, every column as text."""
    return pd.read_csv(Path(root) / PLANTED_CSV, dtype=str)


def source_families(record: pd.DataFrame) -> pd.Series:
    """Path -> the picture it is a copy of: a copy's ``source_path``, else the path itself (another
    film of an original's anatomy is a picture of its own)."""
    copies = record["kind"].isin(SOURCED_KINDS - RELATED_KINDS)
    family = record["source_path"].where(copies, record["path"])
    return pd.Series(family.to_numpy(), index=record["path"])


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (a killed run never leaves a torn file)."""
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False, lineterminator="\n")


def planted_vs_found(record: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per planted kind of a generated set (``planted.csv``), how many the pipeline found.

    A copy is found when it shares a duplicate cluster with its ``source_path``, another film of
    its anatomy (``follow_up``) when it does not (it is not dropped as a copy), an outlier when
    flagged, an unusable file (gif, webp, corrupt, truncated, zero_byte) when its scan status is
    not ``ok``. ``found`` is null where the manifest that would find the kind has not been made.
    """
    rows = frame.set_index("path")
    planted = record[record["kind"] != "original"]
    kinds = [kind for kind in PLANTED_KINDS if kind in set(planted["kind"])]
    kinds += sorted(set(planted["kind"]) - set(kinds))
    table = []
    for kind in kinds:
        group = planted[planted["kind"] == kind]
        paths = group["path"].tolist()
        found: pd.Series | None = None
        if kind in STATUS_KINDS:
            how = "scan status is not ok"
            status = rows["status"].reindex(paths)
            found = status.notna() & (status != "ok")
        elif kind == "outlier":
            how = "flagged as an outlier"
            if "is_outlier" in rows:
                found = flags(rows["is_outlier"].reindex(paths))
            else:
                how += " (run curate outliers)"
        elif kind in RELATED_KINDS:
            how = "kept apart from its source's duplicate cluster"
            if "cluster_id" in rows:
                film = rows["cluster_id"].reindex(paths).reset_index(drop=True)
                source = rows["cluster_id"].reindex(group["source_path"]).reset_index(drop=True)
                apart = film.notna() & source.notna() & film.ne(source)
                found = pd.Series(flags(apart).to_numpy(), paths)
            else:
                how += " (run curate dedupe)"
        elif group["source_path"].notna().all():
            how = "in its source's duplicate cluster"
            if "cluster_id" in rows:
                copy = rows["cluster_id"].reindex(paths).reset_index(drop=True)
                source = rows["cluster_id"].reindex(group["source_path"]).reset_index(drop=True)
                found = pd.Series(flags(copy.eq(source)).to_numpy(), paths)
            else:
                how += " (run curate dedupe)"
        else:
            how = "no rule for this kind"
        missed = [] if found is None else [path for path, hit in found.items() if not hit]
        table.append(
            {
                "kind": kind,
                "planted": len(paths),
                "found": pd.NA if found is None else int(found.sum()),
                "found when": how,
                "missed (first 3)": " | ".join(missed[:3]),
            }
        )
    columns = ["kind", "planted", "found", "found when", "missed (first 3)"]
    return pd.DataFrame(table, columns=columns).set_index("kind")
