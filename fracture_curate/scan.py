"""``curate scan``: every file under a dataset root, kept or dropped, with labels and stats."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fracture_curate.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    LoadedImage,
    decode,
    open_image,
)
from fracture_curate.layouts import (
    LAYOUTS,
    LayoutError,
    detect_layout,
    labels_from_path,
    read_label_csv,
)
from fracture_curate.manifest import manifest_path, write_manifest
from fracture_curate.phash import dihedral_phash

DEFAULT_FORMATS = ("JPEG", "PNG")

#: Column name -> pandas dtype of ``scan.parquet``, in order.
SCAN_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
    "bytes": "Int64",
    "status": "string",
    "reason": "string",
    "format": "string",
    "extension": "string",
    "label": "string",
    "source_split": "string",
    "patient_id": "string",
    "study_id": "string",
    "body_region": "string",
    "width": "Int64",
    "height": "Int64",
    "mode": "string",
    "bit_depth": "Int64",
    "n_frames": "Int64",
    "colour_count": "Int64",
    "is_grayscale": "boolean",
    "mean_intensity": "Float64",
    "std_intensity": "Float64",
    "pixel_sha256": "string",
    "phash": "object",  # bytes: 8 orientations x 256-bit pHash (fracture_curate.phash)
}


@dataclass(frozen=True)
class ScanResult:
    """The scan table and the layout its labels were read with."""

    frame: pd.DataFrame
    layout: str
    unmatched_labels: list[str]  #: CSV rows naming files that were not found


def list_files(root: Path, *, exclude: Sequence[Path] = ()) -> list[str]:
    """Every file under ``root``, as sorted relative POSIX paths; ``exclude`` folders skipped."""
    excluded = {path.resolve() for path in exclude}
    found = []
    for directory, subdirectories, files in os.walk(root):
        current = Path(directory)
        subdirectories[:] = [d for d in subdirectories if (current / d).resolve() not in excluded]
        found.extend((current / name).relative_to(root).as_posix() for name in files)
    return sorted(found)


def inspect_file(
    root: Path,
    relative_path: str,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """One scan row (without labels) for one file. Never raises for a bad file."""
    path = root / relative_path
    row: dict[str, Any] = {
        "path": relative_path,
        "extension": path.suffix.lower().lstrip("."),
    }
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return row | _failure("unreadable", "not a regular file")
        data = path.read_bytes()
    except FileNotFoundError:
        return row | _failure("unreadable", "file vanished or is a broken link")
    except PermissionError:
        return row | _failure("unreadable", "permission denied")
    except OSError as error:
        return row | _failure("unreadable", f"cannot read file: {error.strerror or error}")
    row["image_id"] = hashlib.sha256(data).hexdigest()
    row["bytes"] = len(data)
    if not data:
        return row | _failure("empty", "zero-byte file")
    try:
        with open_image(data, max_pixels=max_pixels) as image:
            row["format"] = image.format
            row["width"], row["height"] = image.size
            row["mode"] = image.mode
            if image.format not in formats:
                kept = ", ".join(formats)
                return row | _failure(
                    "dropped_format", f"{image.format} is not a kept format ({kept})"
                )
            loaded = decode(image)
    except ImageLoadError as error:
        return row | _failure(error.status, error.reason)
    return row | {"status": "ok"} | image_stats(loaded)


def image_stats(image: LoadedImage) -> dict[str, Any]:
    """Size, depth, colour count, intensity stats and the pixel hash of a decoded image.

    Intensities are fractions of the container's full scale (255 or 65535).
    """
    pixels = image.pixels
    full_scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    if pixels.ndim == 2:
        colour_count = int(np.count_nonzero(np.bincount(pixels.ravel())))
        luminance = pixels
    else:
        packed = (
            pixels[:, :, 0].astype(np.uint32) << 16
            | pixels[:, :, 1].astype(np.uint32) << 8
            | pixels[:, :, 2]
        )
        colour_count = len(np.unique(packed))
        luminance = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return {
        "height": pixels.shape[0],
        "width": pixels.shape[1],
        "mode": image.mode,
        "bit_depth": image.bit_depth,
        "n_frames": image.n_frames,
        "colour_count": colour_count,
        "is_grayscale": image.is_grayscale,
        "mean_intensity": float(luminance.mean(dtype=np.float64)) / full_scale,
        "std_intensity": float(luminance.std(dtype=np.float64)) / full_scale,
        "pixel_sha256": pixel_hash(pixels),
        "phash": dihedral_phash(pixels),
    }


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of a canonical pixel array, its dtype and shape included."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def scan_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    labels_csv: str | Path | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exclude: Sequence[Path] = (),
    progress: Any = None,
) -> ScanResult:
    """Scan every file under ``root`` into a table, one row per file.

    ``progress`` is an optional ``rich.progress.Progress`` to advance as files are inspected.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a folder")
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if labels_csv is not None:
        layout = "csv"
    elif layout == "csv":
        raise LayoutError("layout 'csv' needs --labels FILE")
    paths = list_files(root, exclude=exclude)
    if layout == "auto":
        layout = detect_layout(paths)
    csv_labels = read_label_csv(labels_csv) if labels_csv is not None else {}

    inspect = partial(
        inspect_file, root, formats=tuple(f.upper() for f in formats), max_pixels=max_pixels
    )
    task = progress.add_task("scanning", total=len(paths)) if progress is not None else None
    rows = []
    for row in _map(inspect, paths, workers):
        labels = (
            csv_labels.get(row["path"])
            if layout == "csv"
            else labels_from_path(row["path"], layout)
        )
        rows.append(row | asdict(labels) if labels is not None else row)
        if progress is not None:
            progress.advance(task)
    frame = pd.DataFrame(rows, columns=list(SCAN_COLUMNS)).astype(SCAN_COLUMNS)
    unmatched = sorted(set(csv_labels) - set(paths))
    return ScanResult(frame=frame, layout=layout, unmatched_labels=unmatched)


def run_scan(
    root: str | Path,
    directory: str | Path,
    *,
    layout: str = "auto",
    labels_csv: str | Path | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Any = None,
) -> ScanResult:
    """Scan ``root`` and write ``directory/scan.parquet`` (the output folder is never scanned)."""
    result = scan_dataset(
        root,
        layout=layout,
        labels_csv=labels_csv,
        formats=formats,
        workers=workers,
        max_pixels=max_pixels,
        exclude=[Path(directory)],
        progress=progress,
    )
    params = {
        "root": str(Path(root).resolve()),
        "layout": result.layout,
        "labels_csv": str(labels_csv) if labels_csv else None,
        "formats": list(formats),
        "max_pixels": max_pixels,
    }
    write_manifest(result.frame, manifest_path(directory, "scan"), stage="scan", params=params)
    return result


def summarise_scan(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts for the end-of-scan summary: files by status, by format, labels by source split."""
    kept = frame[frame["status"] == "ok"]
    by_split = pd.crosstab(
        kept["label"].fillna("(none)"), kept["source_split"].fillna("(none)"), margins=True
    )
    return {
        "status": frame["status"].value_counts().rename_axis("status").to_frame("files"),
        "format": frame["format"]
        .fillna("(unknown)")
        .value_counts()
        .rename_axis("format")
        .to_frame("files"),
        "label_by_split": by_split,
    }


def _failure(status: str, reason: str) -> dict[str, str]:
    return {"status": status, "reason": reason}


def _map(function: Any, items: list[str], workers: int | None) -> Iterator[dict[str, Any]]:
    """``map`` over processes (in order), or in this process when one worker is asked for."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) < 2:
        yield from map(function, items)
        return
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, items, chunksize=chunksize)
