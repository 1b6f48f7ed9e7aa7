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
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fracture_curate.errors import ConfigError
from fracture_curate.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    LoadedImage,
    decode,
    open_image,
)
from fracture_curate.layouts import LAYOUTS, detect_layout, labels_from_path, read_label_csv
from fracture_curate.manifest import manifest_path, write_manifest
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.phash import dihedral_phash
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.schema import SCAN_COLUMNS


@dataclass(frozen=True)
class ScanConfig:
    """How files are read: the folder layout labels come from, and which files are kept."""

    layout: str = "auto"  #: one of LAYOUTS; "auto" detects it, a labels CSV implies "csv"
    labels_csv: Path | None = None  #: CSV with path,label (and optional split, patient_id...)
    formats: tuple[str, ...] = ("JPEG", "PNG")  #: formats kept (read from the content)
    max_pixels: int = DEFAULT_MAX_PIXELS  #: decompression-bomb guard

    CONSTRAINTS: ClassVar[Constraints] = {
        "layout": Options(LAYOUTS),
        "max_pixels": Interval(1, integer=True),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(f.strip().upper() for f in self.formats))
        check_params(self, self.CONSTRAINTS)
        if not self.formats or not all(self.formats):
            raise ConfigError(f"--formats must name at least one format; got {self.formats!r}")
        if self.layout == "csv" and self.labels_csv is None:
            raise ConfigError("layout 'csv' needs --labels FILE")


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
    formats: Sequence[str] = ScanConfig.formats,
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
    config: ScanConfig = ScanConfig(),
    *,
    workers: int | None = None,
    exclude: Sequence[Path] = (),
    on_progress: ProgressCallback | None = None,
) -> ScanResult:
    """Scan every file under ``root`` into a table, one row per file.

    ``workers`` processes inspect the files (default: one per core); ``exclude`` folders are not
    walked.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a folder")
    layout = "csv" if config.labels_csv is not None else config.layout
    paths = list_files(root, exclude=exclude)
    if layout == "auto":
        layout = detect_layout(paths)
    csv_labels = read_label_csv(config.labels_csv) if config.labels_csv is not None else {}

    inspect = partial(inspect_file, root, formats=config.formats, max_pixels=config.max_pixels)
    phase = Phase(on_progress, "scanning", len(paths))
    rows = []
    for row in _map(inspect, paths, workers):
        labels = (
            csv_labels.get(row["path"])
            if layout == "csv"
            else labels_from_path(row["path"], layout)
        )
        rows.append(row | asdict(labels) if labels is not None else row)
        phase.advance()
    frame = pd.DataFrame(rows, columns=list(SCAN_COLUMNS)).astype(SCAN_COLUMNS)
    unmatched = sorted(set(csv_labels) - set(paths))
    return ScanResult(frame=frame, layout=layout, unmatched_labels=unmatched)


def run_scan(
    root: str | Path,
    directory: str | Path,
    config: ScanConfig = ScanConfig(),
    *,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScanResult:
    """Scan ``root`` and write ``directory/scan.parquet`` (the output folder is never scanned)."""
    result = scan_dataset(
        root, config, workers=workers, exclude=[Path(directory)], on_progress=on_progress
    )
    params = asdict(config) | {"root": str(Path(root).resolve()), "layout": result.layout}
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
