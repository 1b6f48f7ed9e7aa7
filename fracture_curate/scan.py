"""``curate scan``: every file under a dataset root, kept or dropped, with labels and stats."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fracture_curate.dataset_files import (
    content_id,
    is_utf8,
    list_files,
    printable_path,
    resolve_inside,
)
from fracture_curate.dicom import (
    DEFAULT_WINDOW,
    DICOM_FORMAT,
    Window,
    decode_dicom,
    header_columns,
    is_dicom,
    open_dicom,
)
from fracture_curate.errors import ConfigError
from fracture_curate.images import (
    DEFAULT_MAX_PIXELS,
    LOSSLESS_FORMATS,
    ImageLoadError,
    LoadedImage,
    decode,
    open_image,
)
from fracture_curate.layouts import (
    LAYOUTS,
    PATIENT_SCHEMES,
    check_detected_layout,
    choose_layout,
    compile_patient_pattern,
    find_image_tables,
    label_warnings,
    labels_from_path,
    patient_keys,
    read_label_csv,
)
from fracture_curate.manifest import folder_lock, manifest_path, write_manifest
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.phash import dihedral_phash
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.pseudonyms import dataset_key, keep_key
from fracture_curate.runtime import die_with_parent
from fracture_curate.schema import SCAN_COLUMNS


@dataclass(frozen=True)
class ScanConfig:
    """How files are read: the folder layout labels come from, and which files are kept."""

    layout: str = "auto"  #: one of LAYOUTS; "auto" detects it, a labels CSV implies "csv"
    labels_csv: Path | None = None  #: CSV with path,label (and optional split, patient_id...)
    formats: tuple[str, ...] = ("JPEG", "PNG", "DICOM")  #: formats kept (read from the content)
    max_pixels: int = DEFAULT_MAX_PIXELS  #: decompression-bomb guard
    #: Images smaller than this on a side, longer than ``max_aspect`` times their width (or the
    #: other way round), or of a single grey level, are ``degenerate``: no radiograph looks so,
    #: and their perceptual hashes and embeddings would match one another as copies.
    min_side: int = 32
    max_aspect: float = 10.0
    #: A regex searched in each relative path, with a named group ``patient`` (and optionally
    #: ``study``): it sets the patient keys of the files it matches, over any other source.
    patient_pattern: str | None = None
    #: Recognise the public naming schemes of ``layouts.PATIENT_SCHEMES`` in file names.
    auto_patients: bool = True
    #: The VOI transform DICOM files are decoded with, by this stage and every later one (a
    #: Window, or its text: "preset:2", "percentile:1,99", "full").
    window: Window | str = DEFAULT_WINDOW

    CONSTRAINTS: ClassVar[Constraints] = {
        "layout": Options(LAYOUTS),
        "max_pixels": Interval(1, integer=True),
        "min_side": Interval(1, integer=True),
        "max_aspect": Interval(1),
        "auto_patients": Options((True, False)),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(f.strip().upper() for f in self.formats))
        if isinstance(self.window, str):  # as the command line and a manifest write it
            object.__setattr__(self, "window", Window.parse(self.window))
        check_params(self, self.CONSTRAINTS)
        if not self.formats or not all(self.formats):
            raise ConfigError(f"--formats must name at least one format; got {self.formats!r}")
        if self.layout == "csv" and self.labels_csv is None:
            raise ConfigError("layout 'csv' needs --labels FILE")
        if self.patient_pattern is not None:
            compile_patient_pattern(self.patient_pattern)


#: Runs the per-file function over paths relative to a root (absolute) and yields each file's
#: row as it is done, in any order: :func:`_map` on this machine's cores by default,
#: :meth:`fracture_curate.distributed.RayCluster.map_files` on a Ray cluster.
FileMapper = Callable[[Callable[[str], dict[str, Any]], list[str], Path], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class PatientSource:
    """Where the patient ids of some kept images came from."""

    name: str  #: "pattern", "csv", "mura" or a naming scheme's key ("kermany")
    description: str  #: in words: "file names (Kermany naming)"
    images: int  #: kept images whose patient id it gave
    patients: int  #: distinct patient ids among them


@dataclass(frozen=True)
class ScanResult:
    """The scan table and the layout its labels were read with."""

    frame: pd.DataFrame
    layout: str
    unmatched_labels: list[str]  #: CSV rows naming files that were not found
    #: Why this layout, in words ("class, detected: 412 of 420 files fit ROOT/<class>/...").
    layout_explained: str = ""
    #: What the labels say against the layout: kept images without a label, a single class.
    layout_warnings: tuple[str, ...] = ()
    #: Where the kept images' patient ids came from, in order of priority; empty if nowhere.
    patient_sources: tuple[PatientSource, ...] = ()
    #: Kept images that ``--patient-pattern`` matched; None without a pattern.
    pattern_matched: int | None = None


#: Header values a DICOM row carries until the labels are known: the layout or labels CSV
#: speaks first for patient, study and region, the header where they say nothing.
_DICOM_KEYS = {
    "patient_id": "dicom_patient",
    "study_id": "dicom_study",
    "body_region": "dicom_region",
}


def inspect_file(
    root: Path, relative_path: str, config: ScanConfig = ScanConfig(), key: bytes | None = None
) -> dict[str, Any]:
    """One scan row (without labels) for one file; a DICOM's header columns too, its
    identifiers as pseudonyms under ``key`` (none without a key). Never raises for a bad file."""
    row: dict[str, Any] = {
        "path": relative_path,
        "extension": PurePosixPath(relative_path).suffix.lower().lstrip("."),
    }
    try:
        path = resolve_inside(root, relative_path)
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return row | _failure("unreadable", "not a regular file")
        data = path.read_bytes()
    except ImageLoadError as error:
        return row | _failure(error.status, error.reason)
    except FileNotFoundError:
        return row | _failure("unreadable", "file vanished or is a broken link")
    except PermissionError:
        return row | _failure("unreadable", "permission denied")
    except OSError as error:
        return row | _failure("unreadable", f"cannot read file: {error.strerror or error}")
    row["image_id"] = content_id(data)
    row["bytes"] = len(data)
    if not data:
        return row | _failure("empty", "zero-byte file")
    try:
        if is_dicom(data):
            row["format"] = DICOM_FORMAT
            dicom = open_dicom(data)
            row["mode"], row["lossy"] = dicom.header.photometric, dicom.header.lossy
            row["width"], row["height"] = dicom.header.width, dicom.header.height
            if key is not None:
                columns = header_columns(dicom.dataset, key)
                row |= {_DICOM_KEYS.get(name, name): value for name, value in columns.items()}
            if DICOM_FORMAT not in config.formats:
                return row | _dropped(DICOM_FORMAT, config)
            loaded = decode_dicom(dicom, max_pixels=config.max_pixels, window=config.window)
        else:
            with open_image(data, max_pixels=config.max_pixels) as image:
                row["format"] = image.format
                row["width"], row["height"] = image.size
                row["mode"] = image.mode
                row["lossy"] = image.format not in LOSSLESS_FORMATS
                if image.format not in config.formats:
                    return row | _dropped(image.format, config)
                loaded = decode(image)
    except ImageLoadError as error:
        return row | _failure(error.status, error.reason)
    stats = image_stats(loaded)
    problem = degeneracy(stats["width"], stats["height"], stats["colour_count"], config)
    return row | stats | (_failure("degenerate", problem) if problem else {"status": "ok"})


def degeneracy(width: int, height: int, colour_count: int, config: ScanConfig) -> str | None:
    """Why an image cannot be a radiograph (too small, too elongated, blank), or None."""
    if min(width, height) < config.min_side:
        return f"{width}x{height} pixels: smaller than {config.min_side} on a side"
    if max(width, height) > config.max_aspect * min(width, height):
        return f"{width}x{height} pixels: longer than {config.max_aspect:g} times its width"
    if colour_count <= 1:
        return f"{width}x{height} pixels of one single value: blank"
    return None


def image_stats(image: LoadedImage) -> dict[str, Any]:
    """Size, depth, colour count, intensity stats, the open border and the pixel hash of a
    decoded image.

    Intensities are fractions of the container's full scale (255 or 65535).
    """
    pixels = image.pixels
    full_scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    if pixels.ndim == 2:
        colour_count = int(np.count_nonzero(np.bincount(pixels.ravel())))
        luminance = pixels
        colourfulness = 0.0
    else:
        packed = (
            pixels[:, :, 0].astype(np.uint32) << 16
            | pixels[:, :, 1].astype(np.uint32) << 8
            | pixels[:, :, 2]
        )
        colour_count = len(np.unique(packed))
        luminance = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        colourfulness = hasler_colourfulness(pixels) / 255.0
    return {
        "height": pixels.shape[0],
        "width": pixels.shape[1],
        "mode": image.mode,
        "bit_depth": image.bit_depth,
        "n_frames": image.n_frames,
        "window": image.window,
        "colour_count": colour_count,
        "is_grayscale": image.is_grayscale,
        "colourfulness": colourfulness,
        "mean_intensity": float(luminance.mean(dtype=np.float64)) / full_scale,
        "std_intensity": float(luminance.std(dtype=np.float64)) / full_scale,
        "open_border": open_border(luminance, full_scale),
        "pixel_sha256": pixel_hash(pixels),
        "phash": dihedral_phash(pixels),
    }


#: Grey levels (of 255) within which a border pixel counts as its border's flat fill: enough
#: for the ringing a JPEG copy's fill takes on beside the picture (``dedupe.FILL_SHARE``).
FILL_LEVELS = 2


def open_border(luminance: np.ndarray, full_scale: float) -> float:
    """The share of the image's most open side (first or last row or column) where the picture
    reaches the edge: pixels more than FILL_LEVELS grey levels (of 255) from the most common
    level of the whole border.

    A copy turned with an expanded canvas has flat fill in its corners, and the turned picture
    touches each side at one point only; a copy padded all round has fill along every side: both
    are near 0. A film whose anatomy runs off an edge is open there, and a crop of it keeps that
    side open. The dedupe stage compares it within a cluster (``dedupe.filled_copies``).
    """
    sides = [
        np.rint(side * (255.0 / full_scale)).astype(np.int16)
        for side in (luminance[0], luminance[-1], luminance[:, 0], luminance[:, -1])
    ]
    fill = np.bincount(np.concatenate(sides), minlength=256).argmax()
    return max(float(np.mean(np.abs(side - fill) > FILL_LEVELS)) for side in sides)


def hasler_colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness of an RGB uint8 array (0 for gray; about 15 is
    "slightly", 33 "moderately", 59 "highly" colourful in their survey).

    The spread and mean of the opponent channels R - G and (R + G) / 2 - B: a gray radiograph
    stored in RGB, or one faintly tinted, stays near 0; a natural photograph does not.
    """
    red, green, blue = (rgb[:, :, k].astype(np.float32) for k in range(3))
    red_green, yellow_blue = red - green, 0.5 * (red + green) - blue
    spread = np.hypot(red_green.std(dtype=np.float64), yellow_blue.std(dtype=np.float64))
    mean = np.hypot(red_green.mean(dtype=np.float64), yellow_blue.mean(dtype=np.float64))
    return float(spread + 0.3 * mean)


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
    key: bytes | None = None,
    map_files: FileMapper | None = None,
) -> ScanResult:
    """Scan every file under ``root`` into a table, one row per file.

    ``key`` pseudonymises the patient, study and series a DICOM header names
    (:mod:`fracture_curate.pseudonyms`); without one these are not read.

    ``workers`` processes inspect the files (default: one per core), or ``map_files`` runs
    the inspection elsewhere (a Ray cluster); the table is the same. ``exclude`` folders are
    not walked. Links out of the root, folders that cannot be listed and names that are not
    UTF-8 are rows with a status too (see :mod:`fracture_curate.dataset_files`).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a folder")
    listed = list_files(root, exclude=exclude)
    readable = [path for path in listed.files if is_utf8(path)]
    tables = {table.path: table for table in find_image_tables(root, readable)}
    labels_file = _inside(config.labels_csv, root) if config.labels_csv is not None else None
    others = [path for path in readable if path not in tables and path != labels_file]
    choice = choose_layout(config.layout, others, labels_csv=config.labels_csv is not None)
    if choice.how == "detected":
        from_folders = pd.Series([labels_from_path(p, choice.layout).label for p in others])
        check_detected_layout(choice, from_folders, list(tables.values()), root)
    csv_labels = read_label_csv(config.labels_csv) if config.labels_csv is not None else {}

    phase = Phase(on_progress, "scanning", len(listed.files) + len(listed.skipped))
    rows = {}
    absolute = root.absolute()  # the inspection may run in other folders, on other machines
    inspect = partial(inspect_file, absolute, config=config, key=key)
    if map_files is None:
        inspected = _map(inspect, readable, workers)
    else:
        inspected = map_files(inspect, readable, absolute)
    for row in inspected:
        rows[row["path"]] = row
        phase.advance()
    for path in [path for path in listed.files if not is_utf8(path)]:
        rows[path] = _unlisted_row(path, "bad_name", "the name is not valid UTF-8; rename it")
        phase.advance()
    for path, (status, reason) in listed.skipped.items():
        rows[path] = _unlisted_row(path, status, reason)
        phase.advance()
    for path, table in tables.items():
        if rows[path]["status"] == "not_image":
            rows[path] |= _failure("table", f"a table naming {table.named:,} files of the set")
    if labels_file in rows and rows[labels_file]["status"] in ("not_image", "table"):
        rows[labels_file] |= _failure("table", "the labels CSV given with --labels")
    from_headers: set[str] = set()
    for path, row in rows.items():
        labels = (
            csv_labels.get(path)
            if choice.layout == "csv"
            else labels_from_path(row["path"], choice.layout)
        )
        if labels is not None:
            row |= asdict(labels)
        if row.get("dicom_patient") and not row.get("patient_id"):
            row["patient_id"], row["study_id"] = row["dicom_patient"], row["dicom_study"]
            from_headers.add(path)
        if row.get("dicom_region") and not row.get("body_region"):
            row["body_region"] = row["dicom_region"]
    table = [rows[path] for path in sorted(rows)]
    frame = pd.DataFrame(table, columns=list(SCAN_COLUMNS)).astype(SCAN_COLUMNS)
    frame, sources, pattern_matched = read_patients(frame, config, choice.layout, from_headers)
    unmatched = sorted(set(csv_labels) - set(listed.files))
    kept_labels = frame.loc[frame["status"] == "ok", "label"]
    return ScanResult(
        frame=frame,
        layout=choice.layout,
        layout_explained=choice.explain(),
        unmatched_labels=unmatched,
        layout_warnings=tuple(label_warnings(kept_labels, choice.layout)),
        patient_sources=sources,
        pattern_matched=pattern_matched,
    )


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` in POSIX form, or None when it lies outside."""
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        return None


_SOURCE_WORDS = {
    "pattern": "file paths (--patient-pattern)",
    "csv": "the labels CSV",
    "mura": "folder names (MURA layout)",
    "dicom": "DICOM headers (PatientID, pseudonymised)",
}


def read_patients(
    frame: pd.DataFrame,
    config: ScanConfig,
    layout: str,
    from_headers: Collection[str] = frozenset(),
) -> tuple[pd.DataFrame, tuple[PatientSource, ...], int | None]:
    """Set ``patient_id`` and ``study_id`` from the best source each file has.

    Priority: ``config.patient_pattern``, then the labels CSV or the layout (MURA), whose keys
    ``frame`` already holds, then a naming scheme of :data:`PATIENT_SCHEMES`. A source sets a
    file's patient and study together (a pattern without a ``study`` group clears the study),
    so a study never straddles two patients. A scheme is used only when it fits the set: the one
    matching the most kept images still without a patient, if it matches at least half of them.

    Returns:
        The table with its patient keys; where the kept images' patient ids came from, in
        order of priority; and how many kept images the pattern matched (None without one).
    """
    frame = frame.copy()
    kept = frame["status"] == "ok"
    source = pd.Series(pd.NA, index=frame.index, dtype="string")
    source[frame["patient_id"].notna()] = "csv" if layout == "csv" else layout
    source[frame["path"].isin(from_headers)] = "dicom"  # the header, where the layout is silent
    pattern_matched = None
    if config.patient_pattern is not None:
        pattern = compile_patient_pattern(config.patient_pattern)
        keys = frame["path"].map(lambda path: patient_keys(pattern, path))
        _set_keys(frame, keys, source, "pattern")
        pattern_matched = int((keys.notna() & kept).sum())
    if config.auto_patients:
        open_rows = kept & frame["patient_id"].isna()
        best, best_keys, best_count = None, None, 0
        for scheme in PATIENT_SCHEMES:
            keys = frame["path"].map(scheme.keys)
            count = int((keys.notna() & open_rows).sum())
            if count > best_count:
                best, best_keys, best_count = scheme, keys, count
        if best is not None and 2 * best_count >= int(open_rows.sum()):
            _set_keys(frame, best_keys.where(frame["patient_id"].isna()), source, best.key)
    words = _SOURCE_WORDS | {s.key: f"file names ({s.name})" for s in PATIENT_SCHEMES}
    order = ["pattern", "csv", layout, "dicom", *(s.key for s in PATIENT_SCHEMES)]
    sources = tuple(
        PatientSource(
            name=name,
            description=words.get(name, f"the {name} layout"),
            images=int(mine.sum()),
            patients=frame.loc[mine, "patient_id"].nunique(),
        )
        for name in dict.fromkeys(order)
        if (mine := kept & (source == name).fillna(False)).any()
    )
    return frame, sources, pattern_matched


def _set_keys(frame: pd.DataFrame, keys: pd.Series, source: pd.Series, name: str) -> None:
    """Give the rows where ``keys`` holds a (patient, study) pair those keys and ``name``."""
    found = keys.notna()
    if not found.any():
        return
    pairs = keys[found].tolist()
    frame.loc[found, "patient_id"] = [patient for patient, _ in pairs]
    frame.loc[found, "study_id"] = [study for _, study in pairs]
    source[found] = name


def run_scan(
    root: str | Path,
    directory: str | Path,
    config: ScanConfig = ScanConfig(),
    *,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
    key_file: str | Path | None = None,
    map_files: FileMapper | None = None,
) -> ScanResult:
    """Scan ``root`` and write ``directory/scan.parquet`` (the output folder is never scanned);
    ``map_files`` inspects the files elsewhere, as :func:`scan_dataset` says.

    DICOM identifiers are pseudonymised with :func:`~fracture_curate.pseudonyms.dataset_key`'s
    key (``key_file``, the environment, or one kept beside the manifests, made by the first scan
    that finds a DICOM file).
    """
    with folder_lock(directory):
        key, new_key = dataset_key(directory, key_file)
        result = scan_dataset(
            root,
            config,
            workers=workers,
            exclude=[Path(directory)],
            on_progress=on_progress,
            key=key,
            map_files=map_files,
        )
        if new_key and (result.frame["format"] == DICOM_FORMAT).any():
            keep_key(directory, key)
        params = asdict(config) | {
            "root": str(Path(root).resolve()),
            "window": str(config.window),
            "layout": result.layout,
            "layout_warnings": list(result.layout_warnings),
            "patient_sources": {source.name: source.images for source in result.patient_sources},
        }
        write_manifest(result.frame, manifest_path(directory, "scan"), stage="scan", params=params)
    return result


def patient_lines(result: ScanResult) -> list[tuple[str, bool]]:
    """The scan summary's lines on patients, each with whether it is a warning: where the
    patient ids came from ("patients: 1,204 read from file names (Kermany naming)"), and a
    ``--patient-pattern`` that matched no kept image."""
    lines = [
        (
            f"patients: {source.patients:,} read from {source.description} "
            f"({source.images:,} images)",
            False,
        )
        for source in result.patient_sources
    ]
    if result.pattern_matched == 0:
        kept = result.frame.loc[result.frame["status"] == "ok", "path"]
        example = f", such as {kept.iloc[0]!r}" if len(kept) else ""
        lines.append(
            (
                "--patient-pattern matched no kept image; check it against the paths relative "
                f"to the root{example}",
                True,
            )
        )
    return lines


def summarise_scan(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts for the end-of-scan summary: files by status, by format, labels by source split;
    and where DICOM files were kept, ``imaged``: their modality, body part and view."""
    kept = frame[frame["status"] == "ok"]
    dicom = kept[kept["modality"].notna()]
    imaged = {}
    if not dicom.empty:
        columns = ["modality", "body_region", "view_position"]
        counts = dicom[columns].fillna("(none)").value_counts().sort_index()
        counts.index = pd.Index(
            [" / ".join(keys) for keys in counts.index], name=" / ".join(columns)
        )
        imaged["imaged"] = counts.to_frame("files")
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
    } | imaged


def _dropped(file_format: str, config: ScanConfig) -> dict[str, str]:
    kept = ", ".join(config.formats)
    return _failure("dropped_format", f"{file_format} is not a kept format ({kept})")


def _failure(status: str, reason: str) -> dict[str, str]:
    return {"status": status, "reason": reason}


def _unlisted_row(path: str, status: str, reason: str) -> dict[str, Any]:
    """The row of something found but not inspected, under a name that can be stored."""
    shown = printable_path(path)
    extension = PurePosixPath(shown).suffix.lower().lstrip(".")
    return {"path": shown, "extension": extension} | _failure(status, reason)


def _map(function: Any, items: list[str], workers: int | None) -> Iterator[dict[str, Any]]:
    """``map`` over processes (in order), or in this process when one worker is asked for:
    the default :data:`FileMapper`."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) < 2:
        yield from map(function, items)
        return
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.map(function, items, chunksize=chunksize)
