"""The one image loader every stage uses.

It reads the format from the content (never the file name; DICOM through
:mod:`fracture_curate.dicom`), guards against decompression bombs,
applies EXIF orientation and brings every mode the datasets contain (8/16-bit grayscale, palette,
CMYK, LA/RGBA, RGB) to a canonical pixel array. Failures raise :class:`ImageLoadError`, whose
``status`` and ``reason`` go straight into a manifest row.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fracture_curate.dicom import DEFAULT_WINDOW, Window, is_dicom, load_dicom
from fracture_curate.image_types import ImageLoadError, LoadedImage

#: Pillow formats whose encoding keeps every pixel (a DICOM says so in its header).
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "GIF"})
#: Larger images are refused as probable decompression bombs: Pillow's own default, 89.5 Mpx.
DEFAULT_MAX_PIXELS = 89_478_485
#: This loader's guard (``max_pixels``, checked on the header before any pixel is decoded)
#: replaces Pillow's global one, so that a larger ``--max-pixels`` is honoured too.
Image.MAX_IMAGE_PIXELS = None


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image from a file's bytes lazily (header only) and check it is not a
    decompression bomb."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise ImageLoadError("not_image", "not a recognised image format") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageLoadError(
            "too_large", f"{width}x{height} exceeds the {max_pixels:,}-pixel guard"
        )
    return image


def decode(image: Image.Image, *, draft_size: tuple[int, int] | None = None) -> LoadedImage:
    """Decode an opened image to its canonical array, EXIF orientation applied.

    ``draft_size`` lets JPEG decode at a reduced scale (at least that size), which is much faster
    when the caller resizes anyway.
    """
    file_format, file_mode = image.format, image.mode
    n_frames = getattr(image, "n_frames", 1)  # only formats that can hold several have it
    try:
        if draft_size is not None:
            image.draft(None, draft_size)  # JPEG only; other formats ignore it
        image.load()
        image = ImageOps.exif_transpose(image)
        pixels = _canonical_pixels(image)
    except OSError as error:
        message = str(error)
        status = "truncated" if "truncated" in message else "corrupt"
        raise ImageLoadError(status, f"cannot decode {file_format}: {message}") from error
    except (ValueError, SyntaxError, EOFError) as error:
        raise ImageLoadError("corrupt", f"cannot decode {file_format}: {error}") from error
    return LoadedImage(pixels=pixels, format=file_format, mode=file_mode, n_frames=n_frames)


def load_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    window: Window = DEFAULT_WINDOW,
) -> LoadedImage:
    """Open and decode an image (DICOM included) from a file's bytes in one step; ``window``
    chooses a DICOM's VOI transform (see :class:`fracture_curate.dicom.Window`)."""
    if is_dicom(data):
        return load_dicom(data, max_pixels=max_pixels, window=window)
    with open_image(data, max_pixels=max_pixels) as image:
        return decode(image, draft_size=draft_size)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A canonical array in 8 bits, channels unchanged.

    16-bit images are windowed to their own min-max range, because radiographs rarely use the
    full 16 bits (10- and 12-bit data stored in 16-bit containers are the norm).
    """
    if pixels.dtype != np.uint16:
        return pixels
    low, high = int(pixels.min()), int(pixels.max())
    scale = 255.0 / max(high - low, 1)
    return ((pixels.astype(np.float32) - low) * scale).round().astype(np.uint8)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 array of a canonical array, for models that want three channels."""
    pixels = to_uint8(pixels)
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


def _canonical_pixels(image: Image.Image) -> np.ndarray:
    """Grayscale content as H x W (uint8, or uint16 for deep images); colour as H x W x 3 uint8.

    RGB images whose three channels are equal count as grayscale, so the same picture stored as
    L or as RGB has the same canonical array. Alpha is dropped.
    """
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        array = np.asarray(image)
        if array.dtype != np.uint16:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return array
    if mode == "F":
        return np.clip(np.asarray(image), 0, 255).round().astype(np.uint8)
    if mode in ("1", "L", "LA"):
        return np.asarray(image.convert("L"))
    if mode == "P":
        image = image.convert()  # RGBA where the palette has transparency, else RGB
    array = np.asarray(image.convert("RGB"))
    if (array[:, :, 0] == array[:, :, 1]).all() and (array[:, :, 1] == array[:, :, 2]).all():
        return np.ascontiguousarray(array[:, :, 0])
    return array
