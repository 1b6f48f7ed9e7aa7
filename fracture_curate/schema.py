"""The manifest contract: every table's columns and dtypes, and the values its categories take.

Users read the manifests in pandas, so their columns are the project's API: they are defined here
and nowhere else, and ``manifests/README.md`` explains them. The row table grows stage by stage
(scan, then dedupe, outliers and split each add columns to the table before); the embeddings and
a run's predictions are tables of their own.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

#: The curation stages in the order they run; each reads the manifest of the one before.
STAGES = ("scan", "embed", "dedupe", "outliers", "split")
#: The stages whose manifest is the row table (one row per file found), in order.
TABLE_STAGES = ("scan", "dedupe", "outliers", "split")
#: The stage name a run's predictions are written under (``predictions.parquet``).
PREDICT_STAGE = "predict"

#: The splits of a curated set.
SPLITS = ("train", "val", "test")

#: ``status``: ``ok``, or why the file is not used. The scan sets it; a later stage that reads
#: or checks the files sets ``changed`` or ``vanished`` on a row whose file is no longer the one
#: scanned.
STATUSES = (
    "ok",
    "unreadable",  # permissions, broken links, special files
    "outside_root",  # a symbolic link that leads out of the dataset root (not followed)
    "bad_name",  # a file or folder name that is not valid UTF-8
    "empty",  # zero bytes
    "not_image",  # no image format recognised: text, random bytes
    "table",  # a CSV that names the set's images: a labels CSV, curate synth's planted.csv
    "too_large",  # over the decompression-bomb guard
    "dropped_format",  # a format not kept (GIF, WEBP by default)
    "unsupported",  # a DICOM transfer syntax that no installed decoder reads
    "truncated",  # the data stops early
    "corrupt",  # the data is damaged
    "degenerate",  # too small, an extreme aspect ratio, or blank: not a radiograph
    "changed",  # the file's bytes differ from the scan's (size or SHA-256)
    "vanished",  # the file is gone since the scan
)

#: ``dedupe.parquet`` ``match_kind``: the layers that match copies, most certain first.
MATCH_KINDS = ("bytes", "pixels", "phash", "embedding", "geometry")

#: ``split.parquet`` ``excluded_reason``: why a row takes no part in the split. A file the scan
#: did not keep is excluded for its scan status; the first kind that applies wins.
EXCLUSION_KINDS = (
    *STATUSES[1:],
    "no_label",  # the layout or CSV gives the file no label
    "label_conflict",  # its duplicate cluster holds copies under different labels
    "duplicate",  # a copy of the file kept for its cluster
    "outlier",  # flagged by `curate outliers`, left out with `curate split --drop-outliers`
)

#: ``scan.parquet``: every file found under the dataset root, kept or not.
SCAN_COLUMNS: dict[str, str] = {
    "image_id": "string",  # SHA-256 of the file bytes
    "path": "string",  # relative to the dataset root, POSIX separators
    "bytes": "Int64",
    "status": "string",  # one of STATUSES
    "reason": "string",  # one line explaining a status other than ok
    "format": "string",  # read from the content, not the name
    "extension": "string",
    "label": "string",
    "source_split": "string",  # train / val / test where the source had splits
    "patient_id": "string",
    "study_id": "string",
    "body_region": "string",  # MURA's XR_<REGION>, or a DICOM's BodyPartExamined
    "modality": "string",  # DICOM header columns, null for other formats: CR, DX, CT, ...
    "view_position": "string",  # AP, PA, LAT, ...
    "bits_stored": "Int64",
    "pixel_spacing": "Float64",  # mm between rows (PixelSpacing, else ImagerPixelSpacing)
    "manufacturer": "string",
    "burned_in_annotation": "boolean",
    "series_uid": "string",  # SeriesInstanceUID as a keyed pseudonym
    "width": "Int64",
    "height": "Int64",
    "mode": "string",  # the file's own Pillow mode; a DICOM's PhotometricInterpretation
    "lossy": "boolean",  # its encoding lost information: JPEG, WEBP, a lossy DICOM syntax
    "bit_depth": "Int64",
    "n_frames": "Int64",
    "window": "string",  # a DICOM's VOI transform: "window 1 of 2", "percentile 1-99", ...
    "colour_count": "Int64",
    "is_grayscale": "boolean",
    "colourfulness": "Float64",  # Hasler-Suesstrunk, fraction of 255: 0 gray, ~0.13+ colourful
    "mean_intensity": "Float64",
    "std_intensity": "Float64",
    "open_border": "Float64",  # share of the most open side where the picture reaches the edge
    "pixel_sha256": "string",  # SHA-256 of the decoded pixels
    "phash": "object",  # bytes: 8 orientations x 256-bit pHash (fracture_curate.phash)
}

#: ``embeddings.parquet``: one row per distinct kept file.
EMBEDDING_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "embedding": "object",  # fixed-size list of float32
}

#: Columns ``dedupe.parquet`` adds to the scan table (null for rows the scan did not keep).
DEDUPE_COLUMNS: dict[str, str] = {
    "cluster_id": "Int64",
    "cluster_size": "Int64",
    "is_kept": "boolean",
    "duplicate_of": "string",  # image_id of the kept copy
    "match_kind": "string",  # one of MATCH_KINDS
    "similarity": "Float64",
    "label_conflict": "boolean",
    # Another film of the same anatomy (a follow-up, a second exposure): kept, split together.
    "related_group": "Int64",  # rows showing one anatomy in different films; null: none found
    "related_to": "string",  # image_id of the most strongly related other film
    "related_evidence": "string",  # why: keypoints on one transform, and their share of matches
}

#: ``outliers.parquet`` ``outlier_reason``: the views and checks that flag an image, in order.
OUTLIER_REASONS = (
    "colour",  # a colourful picture among grayscale radiographs
    "blank",  # almost no contrast next to the other images of its bit depth
    "size",  # a thumbnail or a banner next to the set's typical size
    "isolation",  # PCA + Isolation Forest score far above the crowd
    "neighbours",  # far from its nearest images in the embedding space
)

#: Columns ``outliers.parquet`` adds to the dedupe table.
OUTLIER_COLUMNS: dict[str, str] = {
    "outlier_score": "Float64",  # PCA + Isolation Forest; higher is stranger
    "neighbour_distance": "Float64",  # mean cosine distance to the nearest images
    "is_outlier": "boolean",
    "outlier_reason": "string",  # the OUTLIER_REASONS that flagged it, comma-separated
}

#: Columns ``split.parquet`` adds to the outliers table.
SPLIT_COLUMNS: dict[str, str] = {
    "group_id": "Int64",  # rows joined by a duplicate cluster, a related group or a patient
    "split": "string",  # one of SPLITS; null for excluded rows
    "excluded_reason": "string",  # one of EXCLUSION_KINDS; null for rows in the split
    "excluded_detail": "string",  # the particulars: the scan's reason, the copy kept, ...
}

#: The columns each row-table stage adds.
STAGE_COLUMNS: dict[str, dict[str, str]] = {
    "scan": SCAN_COLUMNS,
    "dedupe": DEDUPE_COLUMNS,
    "outliers": OUTLIER_COLUMNS,
    "split": SPLIT_COLUMNS,
}

#: The files of a training run folder that the report and ``train evaluate`` read.
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.parquet"

#: ``predictions.parquet`` of a run: the rows predicted, plus one probability column per class
#: (:func:`probability_column`).
PREDICTION_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
    "split": "string",
    "label": "string",
    "group_id": "Int64",  # the split's independent group: the unit a bootstrap resamples
    "study_id": "string",  # the images of one exam, scored together per study
    "predicted_label": "string",  # at the decision threshold (0.5 for a binary task)
    "predicted_label_val_threshold": "string",  # at the threshold chosen on val (binary only)
}


def table_columns(stage: str) -> dict[str, str]:
    """Every column of a row-table stage's manifest, in order: its own and those before it."""
    if stage not in TABLE_STAGES:
        raise KeyError(f"{stage!r} writes no row table; choose one of {', '.join(TABLE_STAGES)}")
    columns: dict[str, str] = {}
    for earlier in TABLE_STAGES[: TABLE_STAGES.index(stage) + 1]:
        columns |= STAGE_COLUMNS[earlier]
    return columns


def empty_columns(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """A copy of ``frame`` with ``columns`` added (or reset), all null, each of its dtype."""
    result = frame.copy()
    for name, dtype in columns.items():
        result[name] = pd.Series(pd.NA, index=result.index, dtype=dtype)
    return result


def flags(values: pd.Series) -> pd.Series:
    """A nullable boolean column (``is_kept``, ``is_outlier``, ...) as plain booleans, null as
    False: rows the stage did not judge are not flagged."""
    return values.fillna(False).astype(bool)


def column_type_problem(name: str, dtype: str | None, stored: pa.DataType) -> str | None:
    """Why a column stored with Parquet type ``stored`` cannot be the schema's ``dtype``, or
    None when it can. A column of nulls fits any dtype, and any column fits ``None``."""
    if pa.types.is_null(stored):
        return None
    if pa.types.is_dictionary(stored):
        stored = stored.value_type
    fits = {
        "string": pa.types.is_string(stored) or pa.types.is_large_string(stored),
        "Int64": pa.types.is_integer(stored),
        "Float64": pa.types.is_floating(stored),
        "boolean": pa.types.is_boolean(stored),
    }
    if name == "phash":
        return None if pa.types.is_binary(stored) else f"{name} is {stored}, not binary"
    if name == "embedding":
        listed = pa.types.is_fixed_size_list(stored) or pa.types.is_list(stored)
        vectors = listed and pa.types.is_floating(stored.value_type)
        return None if vectors else f"{name} is {stored}, not a list of floats"
    return None if fits.get(dtype, True) else f"{name} is {stored}, not {dtype}"


def probability_column(class_name: str) -> str:
    """The predictions column holding a class's probability: ``prob_<class>``."""
    return f"prob_{class_name}"
