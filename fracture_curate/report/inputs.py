"""What the report is built from: the manifests that can be read, and thumbnails of the files."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from fracture_curate.dataset_files import ScannedFile, shown_path
from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.images import ImageLoadError, to_rgb8
from fracture_curate.manifest import (
    ManifestError,
    check_manifest,
    manifest_path,
    recorded_root,
    recorded_window,
)
from fracture_curate.report.html import data_uri, note
from fracture_curate.schema import STAGES, TABLE_STAGES


@dataclass(frozen=True)
class ReportInputs:
    """The manifests a report is built from."""

    frame: pd.DataFrame  #: the latest row table read: every row, with the columns of its stages
    stage: str  #: the stage that wrote ``frame`` (one of TABLE_STAGES)
    embeddings: pd.DataFrame | None
    provenance: dict[str, dict[str, Any]]  #: stage -> provenance, for the manifests read
    problems: dict[str, str]  #: stage -> why its manifest was not read
    root: Path | None
    window: Window = DEFAULT_WINDOW  #: the one the scan decoded DICOM files with

    def has(self, stage: str) -> bool:
        """Whether ``frame`` carries the columns of ``stage`` (a row-table stage): whether the
        manifest it came from was made by that stage or from one that was."""
        return TABLE_STAGES.index(stage) <= TABLE_STAGES.index(self.stage)

    def missing(self, stage: str) -> str:
        """A note saying that ``stage``'s manifest is needed and how to make it."""
        name = manifest_path("", stage).name
        why = self.problems.get(stage, f"{name} was not read")
        return note(f"Not available: {why}. Run `curate {stage}` to fill this section.")


def read_inputs(manifests: Path, *, show_paths: bool = False) -> ReportInputs:
    """Scan (required) and every later manifest that passes its checks; why the others do not,
    with the manifests folder named by its last part unless ``show_paths``. Of the row tables
    only the latest is read (each holds the columns of those before it)."""
    provenance = {"scan": check_manifest(manifest_path(manifests, "scan"), stage="scan")}
    problems = {}
    folder = shown_path(manifests, show_paths)
    for stage in STAGES[1:]:
        path = manifest_path(manifests, stage)
        if not path.exists():
            problems[stage] = f"no {path.name} in {folder}"
            continue
        try:
            provenance[stage] = check_manifest(path, stage=stage)
        except ManifestError as error:
            message = str(error)
            for whole in {str(Path(manifests).resolve()), str(Path(manifests).absolute())}:
                message = message.replace(whole, folder)  # a relative path names no folder above
            problems[stage] = message
    latest = [stage for stage in TABLE_STAGES if stage in provenance][-1]
    embed = manifest_path(manifests, "embed")
    return ReportInputs(
        frame=pd.read_parquet(manifest_path(manifests, latest)),
        stage=latest,
        embeddings=pd.read_parquet(embed) if "embed" in provenance else None,
        provenance=provenance,
        problems=problems,
        root=recorded_root(provenance["scan"]),
        window=recorded_window(provenance["scan"]),
    )


class Thumbnails:
    """Thumbnails of dataset files as JPEG data URIs, each made once; a placeholder when a file
    can no longer be read or is no longer the one scanned (nothing else is ever shown)."""

    def __init__(self, root: Path | None, size: int, window: Window = DEFAULT_WINDOW) -> None:
        self.root, self.size, self.window = root, size, window
        self.cache: dict[str, str] = {}
        self.failed: set[str] = set()
        self._placeholder: str | None = None

    def __call__(self, row: dict[str, Any]) -> str:
        """The thumbnail of a manifest row (its ``path``, ``image_id`` and ``bytes``)."""
        if row["path"] not in self.cache:
            self.cache[row["path"]] = self._make(row)
        return self.cache[row["path"]]

    def _make(self, row: dict[str, Any]) -> str:
        if self.root is None:
            return self.placeholder(row["path"])
        file = ScannedFile(self.root, row["path"], row["image_id"], int(row["bytes"]), self.window)
        try:
            loaded = file.load(draft_size=(self.size, self.size))
        except ImageLoadError:
            return self.placeholder(row["path"])
        image = Image.fromarray(to_rgb8(loaded.pixels))
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        return data_uri(buffer.getvalue(), "image/jpeg")

    def placeholder(self, path: str) -> str:
        """A grey, crossed-out square: the file at ``path`` could not be read."""
        self.failed.add(path)
        if self._placeholder is None:
            image = Image.new("L", (self.size, self.size), 200)
            draw = ImageDraw.Draw(image)
            draw.line((0, 0, self.size, self.size), fill=120, width=2)
            draw.line((0, self.size, self.size, 0), fill=120, width=2)
            draw.text((8, self.size // 2 - 6), "unreadable", fill=40)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self._placeholder = data_uri(buffer.getvalue(), "image/png")
        return self._placeholder
