"""Writing: where each generated file goes and under what name, how it is encoded, and its entry."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fracture_curate.layouts import MURA_LABELS, layout_folder
from fracture_curate.synthetic.record import RecordEntry

#: Layout -> its split folder names and the share of the originals in each.
LAYOUT_SPLITS: dict[str, tuple[tuple[str | None, ...], tuple[float, ...]]] = {
    "class": ((None,), (1.0,)),
    "split-class": (("train", "val", "test"), (0.7, 0.15, 0.15)),
    "class-split": (("Train", "Test"), (0.8, 0.2)),
    "mura": (("train", "valid"), (0.8, 0.2)),
    "csv": (("train", "val", "test"), (0.7, 0.15, 0.15)),
}
#: The layouts written: scan reads each, the csv one through its labels.csv.
GENERATED_LAYOUTS: tuple[str, ...] = tuple(LAYOUT_SPLITS)
CSV_IMAGES = PurePosixPath("images")  #: the folder of every file of the csv layout
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
PNG_LEVEL = 6  #: compress level of every PNG written, except the re-saved copies
PNG_RESAVE_LEVEL = 9  #: same pixels, (usually) different bytes


def encode(
    image: Image.Image, file_format: str, quality: int | None = None, png_level: int = PNG_LEVEL
) -> bytes:
    """Encode deterministically (fixed encoder parameters, no metadata)."""
    buffer = io.BytesIO()
    if file_format == "JPEG":
        image.save(
            buffer, "JPEG", quality=quality, optimize=False, progressive=False, subsampling=2
        )
    elif file_format == "PNG":
        image.save(buffer, "PNG", compress_level=png_level, optimize=False)
    elif file_format == "WEBP":
        image.save(buffer, "WEBP", quality=80, method=4, lossless=False)
    else:
        image.save(buffer, file_format)
    return buffer.getvalue()


def format_detail(file_format: str, quality: int | None) -> str:
    """The record's detail for an encoding: ``quality=Q`` for JPEG, else ``format=png``..."""
    return f"quality={quality}" if file_format == "JPEG" else f"format={file_format.lower()}"


class DatasetWriter:
    """Names and writes the files of one generated dataset, and keeps their entries in order.

    All randomness of a dataset comes from its one ``rng``, so a seed gives the same bytes.
    """

    def __init__(
        self,
        root: Path,
        layout: str,
        classes: Sequence[str],
        size: int | tuple[int, int],
        png_fraction: float,
        rng: np.random.Generator,
    ) -> None:
        self.root = root
        self.layout = layout
        self.classes = list(classes)
        self.size = size
        self.png_fraction = png_fraction
        self.rng = rng
        self.entries: list[RecordEntry] = []
        self._stems: set[str] = set()
        self._next_patient = 1
        self._next_study: dict[str, int] = {}

    @property
    def labels(self) -> list[str]:
        """The labels files are written under: the classes, or mura's positive and negative."""
        return list(MURA_LABELS) if self.layout == "mura" else self.classes

    @property
    def split_names(self) -> tuple[str | None, ...]:
        """The split folders of the layout (``(None,)`` for the class layout)."""
        return LAYOUT_SPLITS[self.layout][0]

    def new_patient(self) -> str:
        """A fresh patient id: "P00001" style, or "patient00001" (the folder name) for mura."""
        number, self._next_patient = self._next_patient, self._next_patient + 1
        return f"patient{number:05d}" if self.layout == "mura" else f"P{number:05d}"

    def new_study_folder(self, split: str, region: str, patient: str, label: str) -> PurePosixPath:
        """The folder of the patient's next mura study (study1, study2, ...)."""
        number = self._next_study.get(patient, 0) + 1
        self._next_study[patient] = number
        return layout_folder(
            "mura", label, split, region=region, patient=patient, study=f"study{number}"
        )

    def folder(self, label: str, split: str | None) -> PurePosixPath:
        """The folder of a file of class ``label`` in ``split`` (all layouts but mura, whose
        folders are studies: :meth:`new_study_folder`)."""
        if self.layout == "csv":
            return CSV_IMAGES
        return layout_folder(self.layout, label, split)

    def choose_format(self, png: bool) -> tuple[str, int | None]:
        """PNG, or JPEG at a random high quality: (file format, JPEG quality)."""
        if png:
            return "PNG", None
        return "JPEG", int(self.rng.integers(90, 96))

    def write(self, folder: PurePosixPath, data: bytes, entry: RecordEntry) -> None:
        """Write ``data`` in ``folder`` under a fresh random name; keep ``entry`` with its path."""
        relative = folder / f"{self._new_stem()}{EXTENSIONS[entry.file_format]}"
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry.path = relative.as_posix()
        self.entries.append(entry)

    def _new_stem(self) -> str:
        """A fresh random file stem that says nothing about what the file is."""
        while True:
            stem = f"{self.rng.integers(16**10):010x}"
            if stem not in self._stems:
                self._stems.add(stem)
                return stem
