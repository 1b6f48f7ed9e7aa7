"""What the image loader returns, and the error it raises for a file it cannot use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fracture_curate.errors import CurateError


class ImageLoadError(CurateError):
    """An image that cannot be used, with a manifest ``status`` and a one-line ``reason``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.status, self.reason)  # picklable across worker processes


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: the canonical pixel array plus what the file said about itself."""

    pixels: np.ndarray  #: H x W (grayscale, uint8 or uint16) or H x W x 3 (RGB, uint8)
    format: str  #: the container format Pillow detected from the content, e.g. "JPEG"
    mode: str  #: the file's own Pillow mode before conversion, e.g. "I;16", "P", "CMYK"
    n_frames: int
    window: str | None = None  #: the VOI transform a DICOM's grey levels went through, in words

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def is_grayscale(self) -> bool:
        return self.pixels.ndim == 2
