"""The outlier benchmark's images that are not phantoms: real radiograph views and foreign images.

Everything here is read from files installed on this machine (pydicom's and pydicom-data's test
files, scikit-image's bundled photos); nothing is downloaded. ``pydicom.data.get_testdata_file``
is not used: for a file missing locally it tries a download, which hangs without a network.

Real radiographs (inliers). pydicom-data holds one extremity radiograph, RG3 (a computed
radiograph of the right distal tibia and fibula with the ankle, 1760 x 1760, 10-bit,
MONOCHROME1), so its *views* stand in for real radiographs: inverted (bone bright), a crop of
30-90% of the side (aspect 0.75-1.33) centred anywhere in the collimated field (columns 440-1270,
so bigger crops show the collimator's white edges and the lead "R" marker), windowed between
random percentiles of the crop (low 0-5%, high 95-100%) with a gamma of 0.8-1.25, mirrored left to
right half the time, made into another film of that anatomy
(:func:`fracture_curate.synthetic.planting.follow_up_film`: its own projection, soft tissue,
exposure and grain, at 512 px), resized to 256 x 256 and written as 8-bit grey PNG.

Foreign images, three kinds (:data:`FOREIGN_KINDS`):

- ``photo``: natural colour photographs bundled with scikit-image (:data:`PHOTOS`), each a random
  crop of 35-100% of either side, mirrored half the time, resized so its long side is 224-512
  pixels, written as JPEG of quality 80-95.
- ``modality``: another modality or body part (:data:`MODALITY_FILES`: CT, MR, nuclear medicine,
  ultrasound and the chest radiograph RG1, every frame of a multi-frame file a candidate). One
  frame, the modality LUT applied (palette colour through its LUT, colour ultrasound as luminance),
  windowed between random percentiles (low 0.5-5%, high 95-99.5%), MONOCHROME1 inverted, a crop of
  60-100% of either side, resized so its long side is 256-512 pixels, written as 8-bit grey PNG.
  The source files are taken in turn, so each gives about the same number of images.
- ``blank``: near-constant frames, never a single value (the scan drops those as degenerate): a
  grey level of 30-225 with faint Gaussian noise (sigma 0.6-3 grey levels), a faint linear
  gradient (3-12 levels across the frame, any direction, with noise of sigma 0.3), or both;
  256-512 pixels a side, 8-bit grey PNG.
"""

from __future__ import annotations

import importlib.metadata
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from fracture_curate.synthetic.planting import follow_up_film

FOREIGN_KINDS = ("photo", "modality", "blank")

#: scikit-image's bundled natural colour photographs (no pooch download needed); of the stereo
#: motorcycle pair only the left view, the right one being nearly the same picture.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)

#: Distinct images of another modality or body part. Variants of one image (RG1_UNCI, the J2K
#: encodings) and the copies among pydicom's ``examples_*`` files are left out, and so are test
#: patterns (``mlut_18``, ``vlut_04``, ``image_dfl``), segmentation masks and dose grids.
MODALITY_FILES = {
    "693_UNCR.dcm": "CT, head",
    "CT_small.dcm": "CT, spine (128 px)",
    "eCT_Supplemental.dcm": "CT, 2 frames",
    "J2K_pixelrep_mismatch.dcm": "CT, head",
    "explicit_VR-UN.dcm": "CT, abdomen",
    "MR2_UNCR.dcm": "MR, shoulder",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "MR, abdomen",
    "MR_small.dcm": "MR (64 px)",
    "emri_small.dcm": "MR, head, 10 frames (64 px)",
    "JPEG2000_UNC.dcm": "NM, whole-body bone scan",
    "US1_UNCR.dcm": "US, lymph node (colour)",
    "OBXXXX1A_2frame.dcm": "US, obstetric, 2 frames (palette)",
    "gdcm-US-ALOKA-16.dcm": "US, pelvis (palette)",
    "color-pl.dcm": "US, transoesophageal echo (colour)",
    "color3d_jpeg_baseline.dcm": "US, echocardiogram cine, 120 frames (colour)",
    "RG1_UNCR.dcm": "CR, chest",
}

RADIOGRAPH_FILE = "RG3_UNCR.dcm"
#: Columns of RG3 inside the collimator (measured on the image: outside them it is unexposed).
RADIOGRAPH_FIELD = (440, 1270)


@dataclass(frozen=True)
class RenderedImage:
    """One generated image and how it was made."""

    image: Image.Image
    source: str  #: the file or photo it comes from ("" for a blank)
    detail: str  #: the random choices, "key=value;..."
    jpeg_quality: int | None = None  #: written as JPEG of this quality; None: PNG

    @property
    def extension(self) -> str:
        return "png" if self.jpeg_quality is None else "jpg"

    def encode(self) -> bytes:
        """The file's bytes, PNG or JPEG."""
        buffer = io.BytesIO()
        if self.jpeg_quality is None:
            self.image.save(buffer, format="PNG")
        else:
            self.image.save(buffer, format="JPEG", quality=self.jpeg_quality)
        return buffer.getvalue()


def find_dicom(name: str) -> Path:
    """A DICOM test file installed with pydicom-data or pydicom, never downloaded."""
    import pydicom

    for file in importlib.metadata.distribution("pydicom-data").files or []:
        if file.name == name:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if path.is_file():
        return path
    raise FileNotFoundError(f"{name} is not installed locally (pydicom-data or pydicom)")


@cache
def dicom_frames(name: str) -> tuple[np.ndarray, bool]:
    """Every frame of a DICOM file as float32 grey values (frames x rows x columns), and whether
    it is MONOCHROME1 (to be inverted after windowing)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    dataset = pydicom.dcmread(find_dicom(name))
    pixels = dataset.pixel_array
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    photometric = dataset.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    colour = pixels.ndim == (4 if frames > 1 else 3)
    if colour:
        grey = pixels[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    else:
        grey = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    grey = grey.reshape(frames, *grey.shape[-2:])
    return grey, photometric == "MONOCHROME1"


def window(pixels: np.ndarray, low: float, high: float, invert: bool = False) -> np.ndarray:
    """Grey values mapped to [0, 1] between their ``low`` and ``high`` percentiles."""
    lo, hi = np.percentile(pixels, [low, high])
    scaled = np.clip((pixels - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return 1.0 - scaled if invert else scaled


def random_crop(
    pixels: np.ndarray, rng: np.random.Generator, low: float, high: float
) -> tuple[np.ndarray, str]:
    """A crop of ``low``-``high`` of each side at a random place, and its description."""
    rows, columns = pixels.shape[:2]
    height = max(8, round(rows * rng.uniform(low, high)))
    width = max(8, round(columns * rng.uniform(low, high)))
    top = int(rng.integers(0, rows - height + 1))
    left = int(rng.integers(0, columns - width + 1))
    crop = pixels[top : top + height, left : left + width]
    return crop, f"crop={left},{top},{width},{height}"


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """``image`` scaled so that its longer side is ``long_side`` pixels."""
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def to_grey_image(unit: np.ndarray) -> Image.Image:
    """An 8-bit grey image from values in [0, 1]."""
    return Image.fromarray(np.round(unit * 255).astype(np.uint8), mode="L")


def radiograph_views(count: int, rng: np.random.Generator) -> Iterator[RenderedImage]:
    """``count`` distinct views of the real ankle radiograph RG3 (see the module docstring)."""
    frames, monochrome1 = dicom_frames(RADIOGRAPH_FILE)
    raw = frames[0]
    side = raw.shape[0]
    first, last = RADIOGRAPH_FIELD
    for _ in range(count):
        height = round(side * rng.uniform(0.3, 0.9))
        width = min(side, round(height * rng.uniform(0.75, 1.33)))
        centre_x = rng.uniform(first, last)
        left = int(np.clip(centre_x - width / 2, 0, side - width))
        top = int(rng.integers(0, side - height + 1))
        crop = raw[top : top + height, left : left + width]
        low, high, gamma = rng.uniform(0, 5), rng.uniform(95, 100), rng.uniform(0.8, 1.25)
        unit = window(crop, low, high, invert=monochrome1) ** gamma
        mirrored = bool(rng.random() < 0.5)
        view = to_grey_image(unit[:, ::-1] if mirrored else unit).resize(
            (512, 512), Image.Resampling.LANCZOS
        )
        film, made = follow_up_film(rng, np.asarray(view))
        image = Image.fromarray(film).resize((256, 256), Image.Resampling.LANCZOS)
        detail = (
            f"crop={left},{top},{width},{height};window={low:.1f}-{high:.1f}%;"
            f"gamma={gamma:.2f};mirrored={mirrored};film={made}"
        )
        yield RenderedImage(image, RADIOGRAPH_FILE, detail)


def colour_photos(count: int, rng: np.random.Generator) -> Iterator[RenderedImage]:
    """``count`` crops of scikit-image's bundled colour photographs, the photos taken in turn."""
    from skimage import data

    for index in range(count):
        name = PHOTOS[index % len(PHOTOS)]
        photo = getattr(data, name)()
        photo = np.asarray(photo[0] if isinstance(photo, tuple) else photo)[..., :3]
        crop, where = random_crop(photo, rng, 0.35, 1.0)
        mirrored = bool(rng.random() < 0.5)
        long_side, quality = int(rng.integers(224, 513)), int(rng.integers(80, 96))
        image = resize_long_side(Image.fromarray(crop[:, ::-1] if mirrored else crop), long_side)
        detail = f"{where};mirrored={mirrored};long_side={long_side};quality={quality}"
        yield RenderedImage(image.convert("RGB"), name, detail, jpeg_quality=quality)


def modality_images(count: int, rng: np.random.Generator) -> Iterator[RenderedImage]:
    """``count`` grey renderings of other modalities and body parts, the files taken in turn."""
    names = list(MODALITY_FILES)
    for index in range(count):
        name = names[index % len(names)]
        frames, monochrome1 = dicom_frames(name)
        frame = int(rng.integers(0, len(frames)))
        low, high = rng.uniform(0.5, 5), rng.uniform(95, 99.5)
        unit = window(frames[frame], low, high, invert=monochrome1)
        crop, where = random_crop(unit, rng, 0.6, 1.0)
        long_side = int(rng.integers(256, 513))
        image = resize_long_side(to_grey_image(crop), long_side)
        detail = f"frame={frame};window={low:.1f}-{high:.1f}%;{where};long_side={long_side}"
        yield RenderedImage(image, name, detail)


def blank_images(count: int, rng: np.random.Generator) -> Iterator[RenderedImage]:
    """``count`` near-constant grey frames: faint noise, a faint gradient, or both."""
    variants = ("noise", "gradient", "both")
    for index in range(count):
        variant = variants[index % len(variants)]
        height, width = (int(value) for value in rng.integers(256, 513, size=2))
        level = rng.uniform(30, 225)
        rows, columns = np.mgrid[0:height, 0:width]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * columns / width + np.sin(angle) * rows / height
        amplitude = rng.uniform(3, 12) if variant != "noise" else 0.0
        sigma = rng.uniform(0.6, 3) if variant != "gradient" else 0.3
        values = level + amplitude * (ramp - ramp.mean()) + rng.normal(0, sigma, (height, width))
        pixels = np.clip(np.round(values), 0, 255).astype(np.uint8)
        assert len(np.unique(pixels)) > 1, "a blank frame of one single value"
        detail = (
            f"variant={variant};size={width}x{height};level={level:.0f};"
            f"gradient={amplitude:.1f};noise={sigma:.2f}"
        )
        yield RenderedImage(Image.fromarray(pixels, mode="L"), "", detail)


#: Each foreign kind's generator.
FOREIGN_GENERATORS: dict[str, Callable[[int, np.random.Generator], Iterator[RenderedImage]]] = {
    "photo": colour_photos,
    "modality": modality_images,
    "blank": blank_images,
}
