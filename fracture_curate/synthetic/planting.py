"""Planting: one function per planted kind, each making one problem file of a generated set.

A planter gets the writer, the new file's entry and the original the file copies (sourced kinds)
or is filed beside (the others). It fills in the entry (its detail, and any label, split, format
or true label it changes) and returns the bytes to write; :func:`plant` does the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import PurePosixPath

import cv2
import numpy as np
from PIL import Image, features

from fracture_curate.synthetic.drawing import draw_class_phantom, draw_outlier, smooth_noise
from fracture_curate.synthetic.record import PLANTED_KINDS, SOURCED_KINDS, RecordEntry
from fracture_curate.synthetic.writer import (
    PNG_RESAVE_LEVEL,
    DatasetWriter,
    encode,
    format_detail,
)

Planter = Callable[[DatasetWriter, RecordEntry, RecordEntry], bytes]
#: A change of an image's pixels: (rng, image) -> (changed image, detail for the record).
Transform = Callable[[np.random.Generator, Image.Image], tuple[Image.Image, str]]


def kind_applies(kind: str, writer: DatasetWriter) -> bool:
    """Whether ``kind`` can be planted in the writer's dataset (a split leak needs splits...)."""
    if kind == "cross_split":
        return writer.layout != "class"
    if kind == "other_class":
        return len(writer.labels) >= 2
    if kind == "webp":
        return bool(features.check("webp"))
    return True


def plant_all(writer: DatasetWriter, counts: Mapping[str, int]) -> None:
    """Plant ``counts[kind]`` files of every kind that applies, in PLANTED_KINDS order.

    Sourced kinds draw their originals from a shuffled pool of the originals written so far, so
    each original is used once before any is reused.
    """
    originals = list(writer.entries)
    pool: list[RecordEntry] = []
    for kind in PLANTED_KINDS:
        if not kind_applies(kind, writer):
            continue
        for _ in range(counts[kind]):
            source = None
            if kind in SOURCED_KINDS:
                if not pool:
                    pool = [originals[i] for i in writer.rng.permutation(len(originals))]
                source = pool.pop()
            plant(writer, kind, source)


def plant(writer: DatasetWriter, kind: str, source: RecordEntry | None) -> None:
    """Write one planted file of ``kind``: derived from ``source`` for the sourced kinds, else
    filed beside a random original (its "host": same label, split and, for mura, study)."""
    if source is None:
        original = _random_original(writer)
        entry = _hosted_entry(writer, kind, original)
    else:
        original = source
        entry = _copy_entry(kind, source)
    data = PLANTERS[kind](writer, entry, original)
    writer.write(_planted_folder(writer, entry, original), data, entry)


def _random_original(writer: DatasetWriter) -> RecordEntry:
    """A random original among the files written so far (drawn until one is an original)."""
    while True:
        entry = writer.entries[int(writer.rng.integers(len(writer.entries)))]
        if entry.kind == "original":
            return entry


def _hosted_entry(writer: DatasetWriter, kind: str, host: RecordEntry) -> RecordEntry:
    """The entry of a file of ``kind`` filed beside ``host``, under the host's label and split."""
    # csv: a patient of its own; mura: the host's (it joins the host's study); others: none
    patient = writer.new_patient() if writer.layout == "csv" else host.patient_id
    return RecordEntry(
        path="",
        kind=kind,
        label=host.label,
        true_label=host.label,
        split=host.split,
        patient_id=patient,
    )


def _copy_entry(kind: str, source: RecordEntry) -> RecordEntry:
    """The entry of a copy of ``source``: its label, split, patient and format until changed."""
    return replace(source, path="", kind=kind, detail="", source_path=source.path)


def _planted_folder(
    writer: DatasetWriter, entry: RecordEntry, original: RecordEntry
) -> PurePosixPath:
    """The folder of a planted file: its label's and split's, in mura the original's study or,
    for a new label or split, a new study of the same patient."""
    if writer.layout != "mura":
        return writer.folder(entry.label, entry.split)
    if (entry.label, entry.split) == (original.label, original.split):
        return PurePosixPath(original.path).parent
    return writer.new_study_folder(entry.split, original.region, original.patient_id, entry.label)


def _source_bytes(writer: DatasetWriter, source: RecordEntry) -> bytes:
    return (writer.root / source.path).read_bytes()


def _source_image(writer: DatasetWriter, source: RecordEntry) -> Image.Image:
    with Image.open(writer.root / source.path) as image:
        image.load()
        return image


# -- copies of the bytes, or of the pixels ---------------------------------------------------


def _exact_copy(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    return _source_bytes(writer, source)


def _truncated(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    data = _source_bytes(writer, source)
    keep = float(writer.rng.uniform(0.4, 0.6))
    entry.detail = f"kept={keep:.2f}"
    return data[: int(len(data) * keep)]


def _other_class(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    others = [label for label in writer.labels if label != source.label]
    entry.label = str(writer.rng.choice(others))
    entry.detail = f"from={source.label}"
    return _pixel_exact_copy(writer, source)


def _cross_split(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    others = [split for split in writer.split_names if split != source.split]
    entry.split = str(writer.rng.choice(others))
    entry.detail = f"from={source.split}"
    return _pixel_exact_copy(writer, source)


def _pixel_exact_copy(writer: DatasetWriter, source: RecordEntry) -> bytes:
    # JPEG cannot be re-saved without loss, so its bytes are copied.
    if source.file_format == "JPEG":
        return _source_bytes(writer, source)
    return encode(_source_image(writer, source), "PNG", png_level=PNG_RESAVE_LEVEL)


def _reencoded(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    image = _source_image(writer, source)
    quality = int(writer.rng.integers(50, 86))
    if writer.layout == "mura":  # MURA is PNG only: keep the JPEG-degraded pixels in a PNG
        image = Image.open(io.BytesIO(encode(image, "JPEG", quality)))
        entry.file_format, entry.quality = "PNG", None
        entry.detail = f"quality={quality};format=png"
    elif source.file_format == "PNG" or writer.rng.uniform() < 0.5:
        entry.file_format, entry.quality, entry.detail = "JPEG", quality, f"quality={quality}"
    else:
        entry.file_format, entry.quality, entry.detail = "PNG", None, "format=png"
    return encode(image, entry.file_format, entry.quality)


# -- changed pixels, in the source's format --------------------------------------------------


def _transformed(transform: Transform) -> Planter:
    """A planter that changes the source's pixels and encodes them as the source was."""

    def planter(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
        image, entry.detail = transform(writer.rng, _source_image(writer, source))
        return encode(image, entry.file_format, entry.quality)

    return planter


def _resize(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    factor = round(float(rng.uniform(0.5, 0.8)), 2)
    size = (max(round(image.width * factor), 1), max(round(image.height * factor), 1))
    return image.resize(size, Image.Resampling.LANCZOS), f"scale={factor:.2f}"


def _crop(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    fraction = round(float(rng.uniform(0.03, 0.10)), 2)
    cut_x, cut_y = max(round(image.width * fraction), 1), max(round(image.height * fraction), 1)
    left, top = int(rng.integers(cut_x + 1)), int(rng.integers(cut_y + 1))
    box = (left, top, image.width - (cut_x - left), image.height - (cut_y - top))
    return image.crop(box), f"crop={fraction:.2f}"


def _flip(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    if rng.uniform() < 0.5:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "flip=horizontal"
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "flip=vertical"


def _rotate90(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    quarter_turns = int(rng.integers(1, 4))
    rotation = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    return image.transpose(rotation[quarter_turns - 1]), f"angle={90 * quarter_turns}"


def _rotate_small(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    angle = round(float(rng.choice([-1, 1]) * rng.uniform(2.0, 10.0)), 1)
    pixels = np.asarray(image)
    # the corners the rotation uncovers are filled with the image's typical border grey
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = int(np.median(border))
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return rotated, f"angle={angle:.1f}"


def _brighten(rng: np.random.Generator, image: Image.Image) -> tuple[Image.Image, str]:
    low, high = (0.8, 0.9) if rng.uniform() < 0.5 else (1.1, 1.2)
    factor = round(float(rng.uniform(low, high)), 2)
    pixels = np.asarray(image, dtype=np.float32) * factor
    changed = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return changed, f"factor={factor:.2f}"


# -- another film of the same anatomy ------------------------------------------------------


def _follow_up(writer: DatasetWriter, entry: RecordEntry, source: RecordEntry) -> bytes:
    """Another film of the source's anatomy (a related image, not a copy): see
    :func:`follow_up_film`."""
    film, entry.detail = follow_up_film(writer.rng, np.asarray(_source_image(writer, source)))
    return encode(Image.fromarray(film), entry.file_format, entry.quality)


def follow_up_film(rng: np.random.Generator, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """Another acquisition of the anatomy in a grayscale ``pixels`` (bone bright): a stand-in
    for a follow-up film or a second exposure of one patient, as uint8, and its parameters.

    A copy shares its source's acquisition: the same projection and the same grain. A new film
    shares only the anatomy, so this keeps the anatomy (the source smoothed below its grain) and
    changes everything a new acquisition changes: positioning (the limb turned a little in depth:
    a perspective change; a small in-plane turn and zoom; soft tissue settling differently: a
    smooth non-rigid warp), soft-tissue density, exposure (another tone curve and heel-effect
    ramp), the detector's blur and quantum noise, and the collimated field.
    """
    image = pixels.astype(np.float32)
    image = (image - image.min()) / max(float(np.ptp(image)), 1.0)
    height, width = image.shape[:2]
    side = max(height, width)
    anatomy = cv2.GaussianBlur(image, (0, 0), 0.004 * side + 1.0)

    jitter = rng.uniform(-0.04, 0.04, (4, 2)) * (width, height)
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    perspective = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32))
    angle, zoom = float(rng.uniform(-6, 6)), float(rng.uniform(0.93, 1.07))
    turn = np.vstack([cv2.getRotationMatrix2D((width / 2, height / 2), angle, zoom), [0, 0, 1]])
    film = cv2.warpPerspective(
        anatomy, turn @ perspective, (width, height), borderMode=cv2.BORDER_REFLECT
    )
    columns, rows = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    shift_x, shift_y = (0.012 * side * smooth_noise(rng, height, width, side // 4) for _ in "xy")
    film = cv2.remap(
        film, columns + shift_x, rows + shift_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    film += 0.04 * smooth_noise(rng, height, width, side // 3)  # soft-tissue change

    gamma = float(rng.uniform(0.75, 1.35))
    low, high = np.percentile(film, [1, 99])
    film = np.clip((film - low) / max(high - low, 1e-6), 0, 1) ** gamma
    film *= (
        1 + float(rng.uniform(-0.08, 0.08)) * np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    )
    film = cv2.GaussianBlur(film, (0, 0), float(rng.uniform(0.6, 1.2)))
    film += rng.normal(0, rng.uniform(0.01, 0.025), film.shape).astype(np.float32)

    keep_x, keep_y = rng.uniform(0.85, 0.97, 2)
    cut_w, cut_h = round(width * keep_x), round(height * keep_y)
    left, top = int(rng.integers(width - cut_w + 1)), int(rng.integers(height - cut_h + 1))
    film = film[top : top + cut_h, left : left + cut_w]
    detail = f"angle={angle:.1f};zoom={zoom:.2f};gamma={gamma:.2f}"
    return np.clip(film * 255 + 0.5, 0, 255).astype(np.uint8), detail


# -- files beside a host original ------------------------------------------------------------


def _outlier(writer: DatasetWriter, entry: RecordEntry, host: RecordEntry) -> bytes:
    png = writer.layout == "mura" or writer.rng.uniform() < writer.png_fraction
    entry.file_format, entry.quality = writer.choose_format(png)
    entry.true_label = None
    entry.detail = format_detail(entry.file_format, entry.quality)
    return encode(draw_outlier(writer.rng, writer.size), entry.file_format, entry.quality)


def _gif(writer: DatasetWriter, entry: RecordEntry, host: RecordEntry) -> bytes:
    return _phantom_as(writer, entry, "GIF")


def _webp(writer: DatasetWriter, entry: RecordEntry, host: RecordEntry) -> bytes:
    return _phantom_as(writer, entry, "WEBP")


def _phantom_as(writer: DatasetWriter, entry: RecordEntry, file_format: str) -> bytes:
    """A phantom of the entry's class in a format the pipeline does not take."""
    image, entry.detail = draw_class_phantom(writer.rng, writer.size, entry.label)
    entry.file_format = file_format
    return encode(image, file_format)


def _corrupt(writer: DatasetWriter, entry: RecordEntry, host: RecordEntry) -> bytes:
    entry.file_format, entry.true_label = "JPEG", None
    if writer.rng.uniform() < 0.5:
        entry.detail = "random-bytes"
        return writer.rng.bytes(int(writer.rng.integers(500, 4000)))
    entry.detail = "text"  # an error page saved under an image name
    return b"<html><body>404 Not Found</body></html>\n"


def _zero_byte(writer: DatasetWriter, entry: RecordEntry, host: RecordEntry) -> bytes:
    entry.file_format, entry.true_label = "PNG", None
    return b""


#: Planted kind -> the function that makes its file.
PLANTERS: dict[str, Planter] = {
    "exact_copy": _exact_copy,
    "reencoded": _reencoded,
    "resized": _transformed(_resize),
    "cropped": _transformed(_crop),
    "flipped": _transformed(_flip),
    "rotated90": _transformed(_rotate90),
    "rotated_small": _transformed(_rotate_small),
    "brightness": _transformed(_brighten),
    "other_class": _other_class,
    "cross_split": _cross_split,
    "outlier": _outlier,
    "follow_up": _follow_up,
    "gif": _gif,
    "webp": _webp,
    "corrupt": _corrupt,
    "truncated": _truncated,
    "zero_byte": _zero_byte,
}
