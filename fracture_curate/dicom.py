"""DICOM files as the image loader reads them: recognised by content, decoded with pydicom, and
brought to the grayscale a PNG radiograph gives.

The pixel pipeline, in the order DICOM prescribes (PS3.4 N.2): the stored values, then the
modality LUT (rescale slope and intercept, or a modality LUT sequence), then the VOI transform
that the :class:`Window` chooses (by default the file's first preset: its first VOI LUT, or else
its first window centre and width), then MONOCHROME1 inverted so that bone is bright; the result
is scaled to the full 16 bits. Colour
files (RGB, YBR) come out as 8-bit RGB, as a colour PNG does. A multi-frame file gives its first
frame; ``LoadedImage.n_frames`` records how many it holds.

Compressed transfer syntaxes decode through pydicom's plugins: Pillow (JPEG baseline, JPEG 2000)
and GDCM (``python-gdcm``, BSD-licensed: JPEG lossless, JPEG-LS, JPEG 2000, RLE), one wheel that
covers every syntax radiographs are stored in (pylibjpeg's JPEG-lossless plugin is GPL).

Of the header, only what the pixels need and the scan's header columns are read
(:func:`header_columns`); the patient, study and series identifiers leave this module only as
keyed pseudonyms (:mod:`fracture_curate.pseudonyms`), and no message quotes a header value.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fracture_curate.errors import ConfigError
from fracture_curate.image_types import ImageLoadError, LoadedImage
from fracture_curate.pseudonyms import pseudonym

#: The marker after a DICOM Part 10 file's 128-byte preamble.
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
#: The ``format`` of a DICOM file in the scan table.
DICOM_FORMAT = "DICOM"
#: Full scale of the windowed output: the 16 bits of a deep grayscale PNG.
FULL_SCALE = 65535
NO_SOP_CLASS = "no SOP class"
#: Transfer syntaxes that lose information (the others: uncompressed, RLE, JPEG lossless,
#: JPEG-LS lossless, the lossless JPEG 2000 and HTJ2K variants, deflate).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
#: Pixel Data, Float Pixel Data and Double Float Pixel Data.
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


@dataclass(frozen=True)
class Window:
    """Which VOI transform turns a DICOM file's modality values into grey levels.

    ``preset``: the file's Nth preset (``number``, from 1): the Nth item of its VOI LUT sequence
    or, without one, its Nth window centre and width; a file with fewer presets uses its first,
    and one with none its whole range. ``percentile``: a linear window from the ``low`` to the
    ``high`` percentile of the frame's values. ``full``: the frame's whole range. Written as
    ``preset:2``, ``percentile:1,99`` or ``full`` (:meth:`parse`, ``str``).
    """

    kind: Literal["preset", "percentile", "full"] = "preset"
    number: int = 1
    low: float = 0.0
    high: float = 100.0

    def __str__(self) -> str:
        if self.kind == "preset":
            return f"preset:{self.number}"
        if self.kind == "percentile":
            return f"percentile:{self.low:g},{self.high:g}"
        return "full"

    @classmethod
    def parse(cls, text: str) -> Window:
        """A window from its text; a ConfigError whose message says what is accepted."""
        kind, _, value = text.strip().lower().partition(":")
        try:
            if kind == "preset":
                number = int(value)
                if number >= 1:
                    return cls("preset", number=number)
            elif kind == "percentile":
                low, high = (float(part) for part in value.split(","))
                if 0 <= low < high <= 100:
                    return cls("percentile", low=low, high=high)
            elif kind == "full" and not value:
                return cls("full")
        except ValueError:
            pass
        raise ConfigError(
            f"--window {text!r} is not a window: use preset:N (a file's Nth VOI preset, from "
            "1), percentile:LOW,HIGH (0 <= LOW < HIGH <= 100) or full"
        )


#: The VOI transform the DICOM standard's viewers apply by default: the first preset.
DEFAULT_WINDOW = Window()


@dataclass(frozen=True)
class DicomHeader:
    """What the header says about a DICOM file's pixels, read without decoding them."""

    width: int
    height: int
    photometric: str  #: PhotometricInterpretation, e.g. "MONOCHROME1"; the scan's ``mode``
    n_frames: int
    transfer_syntax: str  #: its name, e.g. "JPEG 2000 Image Compression (Lossless Only)"
    lossy: bool  #: a lossy transfer syntax, or marked as lossily compressed once (0028,2110)


@dataclass(frozen=True)
class DicomFile:
    """A DICOM file parsed once (its pixel data still encoded): the header the scan records and
    the dataset :func:`decode_dicom` decodes."""

    dataset: Any  #: the pydicom Dataset
    header: DicomHeader


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: ``DICM`` at byte 128, whatever the file's name."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def open_dicom(data: bytes) -> DicomFile:
    """Parse a DICOM file's bytes, pixels left encoded; ``ImageLoadError`` for a file without
    pixel data or with a header that cannot be read."""
    dataset = _read(data)
    return DicomFile(dataset=dataset, header=_header(dataset))


def header_columns(dataset: Any, key: bytes) -> dict[str, Any]:
    """The scan columns a DICOM dataset fills: what was imaged and how, and its patient, study
    and series as pseudonyms under ``key``. Nothing else of the header (no
    name, birth date or accession number) is read."""
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    try:
        row_spacing = float(spacing[0]) if spacing else None
    except (TypeError, ValueError, IndexError):
        row_spacing = None
    burned_in = str(dataset.get("BurnedInAnnotation", "")).upper()

    def text(keyword: str) -> str | None:
        value = str(dataset.get(keyword, "") or "").strip()
        return value or None

    def hidden(keyword: str) -> str | None:
        value = text(keyword)
        return pseudonym(key, value) if value else None

    return {
        "modality": text("Modality"),
        "body_region": (text("BodyPartExamined") or "").upper() or None,
        "view_position": text("ViewPosition"),
        "bits_stored": int(dataset.BitsStored) if "BitsStored" in dataset else None,
        "pixel_spacing": row_spacing if row_spacing and row_spacing > 0 else None,
        "manufacturer": text("Manufacturer"),
        "burned_in_annotation": {"YES": True, "NO": False}.get(burned_in),
        "patient_id": hidden("PatientID"),
        "study_id": hidden("StudyInstanceUID"),
        "series_uid": hidden("SeriesInstanceUID"),
    }


def load_dicom(data: bytes, *, max_pixels: int, window: Window = DEFAULT_WINDOW) -> LoadedImage:
    """Decode a DICOM file's first frame through the pixel pipeline of the module docstring."""
    return decode_dicom(open_dicom(data), max_pixels=max_pixels, window=window)


def decode_dicom(
    file: DicomFile, *, max_pixels: int, window: Window = DEFAULT_WINDOW
) -> LoadedImage:
    """Decode an opened DICOM file's first frame (see :func:`load_dicom`)."""
    dataset, header = file.dataset, file.header
    if header.width * header.height > max_pixels:
        raise ImageLoadError(
            "too_large",
            f"{header.width}x{header.height} exceeds the {max_pixels:,}-pixel guard",
        )
    try:
        dataset.pixel_array_options(index=0)
        with _quiet():
            stored = dataset.pixel_array
    except (RuntimeError, NotImplementedError) as error:
        raise ImageLoadError(
            "unsupported", f"no installed decoder reads DICOM {header.transfer_syntax}"
        ) from error
    except (ValueError, EOFError, OSError, AttributeError, TypeError, IndexError) as error:
        # pydicom's message may quote header values: only its kind reaches the manifest
        status = "truncated" if _too_short(error) else "corrupt"
        raise ImageLoadError(
            status, f"cannot decode DICOM {header.transfer_syntax} ({type(error).__name__})"
        ) from error
    if stored.ndim == 3:  # colour: pydicom gives RGB (YBR converted)
        pixels, applied = np.ascontiguousarray(_to_uint8(stored)), None
    else:
        pixels, applied = grayscale(stored, dataset, window)
    return LoadedImage(
        pixels=pixels,
        format=DICOM_FORMAT,
        mode=header.photometric,
        n_frames=header.n_frames,
        window=applied,
    )


def grayscale(
    stored: np.ndarray, dataset: Any, window: Window = DEFAULT_WINDOW
) -> tuple[np.ndarray, str]:
    """A monochrome frame through the modality LUT, the VOI transform ``window`` chooses and
    MONOCHROME1 inversion, scaled to uint16 (bone bright); and that transform in words
    ("window 1 of 2", "VOI LUT 2 of 2", "percentile 1-99", "full range (no preset)")."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = apply_modality_lut(stored, dataset)
    values = np.asarray(modality, dtype=np.float64)
    luts = len(dataset.get("VOILUTSequence") or [])
    windows = _windows(dataset)
    presets = luts or len(windows)
    if window.kind == "percentile":
        low, high = np.percentile(values, [window.low, window.high])
        applied = f"percentile {window.low:g}-{window.high:g}"
    elif window.kind == "full" or not presets:
        low, high = values.min(), values.max()
        applied = "full range" if window.kind == "full" else "full range (no preset)"
    else:
        index = window.number - 1 if window.number <= presets else 0
        kind = "VOI LUT" if luts else "window"
        applied = f"{kind} {index + 1} of {presets}"
        if index != window.number - 1:
            applied += f" (no preset {window.number})"
        if luts:  # a LUT is indexed by whole modality values
            with _quiet():
                looked_up = apply_voi_lut(np.rint(modality).astype(np.int64), dataset, index=index)
            values = np.asarray(looked_up, dtype=np.float64)
            low, high = values.min(), values.max()
        else:
            low, high = windows[index]
    low, high = float(low), float(high)
    scaled = (np.clip(values, low, high) - low) / max(high - low, np.finfo(float).eps)
    pixels = np.rint(scaled * FULL_SCALE).astype(np.uint16)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = FULL_SCALE - pixels
    return pixels, applied


def _windows(dataset: Any) -> list[tuple[float, float]]:
    """The linear range of each window centre and width the file holds (PS3.3 C.11.2.1.2);
    a pair that is no window (unreadable, or narrower than 1) ends the list."""
    centres, widths = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centres is None or widths is None:
        return []
    centres = list(centres) if _is_multi(centres) else [centres]
    widths = list(widths) if _is_multi(widths) else [widths]
    ranges = []
    for centre, width in zip(centres, widths, strict=False):
        try:
            centre, width = float(centre), float(width)
        except (TypeError, ValueError):
            break
        if not (width >= 1 and np.isfinite(centre)):  # NaN fails the first test too
            break
        ranges.append((centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2))
    return ranges


def _read(data: bytes) -> Any:
    """The whole dataset (pixel data still encoded); ``ImageLoadError`` naming the error's kind
    only, since pydicom's message may quote header values (a patient's name)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _quiet():
            return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as error:
        status = "truncated" if _too_short(error) else "corrupt"
        raise ImageLoadError(
            status, f"cannot read the DICOM header ({type(error).__name__})"
        ) from error


def _header(dataset: Any) -> DicomHeader:
    if not any(tag in dataset for tag in PIXEL_DATA_TAGS):
        kind = _kind(dataset)
        if "Image" in kind or kind == NO_SOP_CLASS:  # an image's header, then the file ends
            raise ImageLoadError("truncated", f"DICOM ({kind}) ends before its pixel data")
        raise ImageLoadError("not_image", f"DICOM without pixel data ({kind})")
    try:
        width, height = int(dataset.Columns), int(dataset.Rows)
    except (AttributeError, TypeError, ValueError) as error:
        raise ImageLoadError("corrupt", "DICOM header without Rows and Columns") from error
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return DicomHeader(
        width=width,
        height=height,
        photometric=str(dataset.get("PhotometricInterpretation", "MONOCHROME2")),
        n_frames=int(dataset.get("NumberOfFrames", 1) or 1),
        transfer_syntax=syntax.name if syntax is not None else "of no stated transfer syntax",
        lossy=syntax in LOSSY_SYNTAXES or dataset.get("LossyImageCompression") == "01",
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's warnings and log lines silenced: a file's problems reach the manifest as its
    status and reason, and a message that quotes a header value must reach nothing."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _kind(dataset: Any) -> str:
    """The SOP class in words ("Basic Text SR Storage"), or NO_SOP_CLASS."""
    uid = dataset.get("SOPClassUID")
    return uid.name if uid is not None else NO_SOP_CLASS


def _is_multi(value: object) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str | bytes)


def _too_short(error: BaseException) -> bool:
    message = str(error).lower()
    words = ("less than expected", "reshape", "end of file", "truncat")
    return any(word in message for word in words)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = float(pixels.max()) or 1.0
    return np.rint(np.clip(pixels, 0, None) / top * 255).astype(np.uint8)
