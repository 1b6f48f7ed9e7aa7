"""Synthetic radiograph-like datasets with planted problems.

Used by the tests, the demo and quality benchmarks of the duplicate/outlier detectors.
Phantoms are drawn with vectorised numpy; datasets are written in one of several on-disk
layouts, together with ``planted.csv``, a record of every file written and what it is.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, features

LAYOUTS: tuple[str, ...] = ("class", "split-class", "class-split", "mura", "csv")
PLANTED_KINDS: tuple[str, ...] = (
    "exact_copy",
    "reencoded",
    "resized",
    "cropped",
    "flipped",
    "rotated90",
    "rotated_small",
    "brightness",
    "other_class",
    "cross_split",
    "outlier",
    "gif",
    "webp",
    "corrupt",
    "truncated",
    "zero_byte",
)
FRACTURE_KINDS: tuple[str, ...] = ("transverse", "oblique", "gap", "offset", "comminuted")
RECORD_COLUMNS: tuple[str, ...] = (
    "path",
    "kind",
    "source_path",
    "label",
    "true_label",
    "split",
    "patient_id",
    "detail",
)
PLANTED_CSV = "planted.csv"
LABELS_CSV = "labels.csv"

_NEGATIVE_WORDS = re.compile(r"not|normal|negative", re.IGNORECASE)
_MURA_REGIONS = ("WRIST", "ELBOW", "HAND", "SHOULDER", "FINGER", "FOREARM", "HUMERUS")
_MURA_LABELS = ("positive", "negative")
#: Planted kinds that are copies of an original: a duplicate detector should find each of them.
DUPLICATE_KINDS: tuple[str, ...] = PLANTED_KINDS[: PLANTED_KINDS.index("outlier")]
# Kinds that copy or transform an existing original (their record has a source_path).
_SOURCED_KINDS = frozenset({*DUPLICATE_KINDS, "truncated"})
_LAYOUT_SPLITS: dict[str, tuple[tuple[str | None, ...], tuple[float, ...]]] = {
    "class": ((None,), (1.0,)),
    "split-class": (("train", "val", "test"), (0.7, 0.15, 0.15)),
    "class-split": (("Train", "Test"), (0.8, 0.2)),
    "mura": (("train", "valid"), (0.8, 0.2)),
    "csv": (("train", "val", "test"), (0.7, 0.15, 0.15)),
}
_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
_PNG_LEVEL = 6  # compress level of every PNG written, except the re-saved copies
_PNG_RESAVE_LEVEL = 9  # same pixels, (usually) different bytes


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return (height, width) from an int (square) or a PIL-style (width, height) tuple."""
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        w, h = (int(s) for s in size)
    if w < 16 or h < 16:
        raise ValueError(f"image size must be at least 16x16, got {size!r}")
    return h, w


def _ramp(x: np.ndarray) -> np.ndarray:
    """Anti-aliased step: 0 for x <= -0.5 px, 1 for x >= 0.5 px."""
    return np.clip(x + 0.5, 0.0, 1.0)


@dataclass
class _Bone:
    cx: float
    cy: float
    angle: float
    half_len: float
    half_w: float
    inner: float  # radius of the medullary canal, as a fraction of half_w
    marrow: float  # relative density of the canal
    flare: float  # widening of the shaft towards its ends (metaphyses)
    knob_end: int  # -1 or +1: which end carries a joint-like knob; 0: none
    knob_a: float  # knob semi-axes, in units of half_w
    knob_b: float


@dataclass
class _Fracture:
    u0: float  # position of the break along the bone axis
    phi: float  # obliquity of the break line (0: perpendicular to the axis)
    du: float = 0.0  # displacement of the distal part along the axis
    dv: float = 0.0  # displacement of the distal part across the axis
    line_depth: float = 0.0  # darkening of the break line (0: none)
    line_width: float = 1.0
    # comminuted: short dark segments (u, v, angle, half length) near the break
    fragments: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Python floats keep the float32 pixel arithmetic in float32 (numpy scalars would not).
        for name in ("u0", "phi", "du", "dv", "line_depth", "line_width"):
            setattr(self, name, float(getattr(self, name)))


def _shaft_density(u: np.ndarray, v: np.ndarray, bone: _Bone) -> np.ndarray:
    """Projected density of a rounded hollow rod (plus knob) in bone-local coordinates."""
    along = np.abs(u)
    dx = np.maximum(along - bone.half_len, 0.0)
    width = bone.half_w * (
        1.0 + bone.flare * (np.minimum(along, bone.half_len) / bone.half_len) ** 2
    )
    r2 = (dx * dx + v * v) / (width * width)
    outer = np.sqrt(np.maximum(1.0 - r2, 0.0))
    inner = np.sqrt(np.maximum(bone.inner**2 - r2, 0.0))
    dens = outer - (1.0 - bone.marrow) * inner
    if bone.knob_end:
        ku = (u - bone.knob_end * bone.half_len) * (1.0 / (bone.knob_a * bone.half_w))
        kv = v * (1.0 / (bone.knob_b * bone.half_w))
        k2 = ku * ku + kv * kv
        knob = 0.9 * np.sqrt(np.maximum(1.0 - k2, 0.0)) - 0.35 * np.sqrt(np.maximum(0.8 - k2, 0.0))
        dens = np.maximum(dens, knob)
    return dens


def _bone_density(u: np.ndarray, v: np.ndarray, bone: _Bone, frac: _Fracture | None) -> np.ndarray:
    """Density of one bone, with its fracture if any."""
    if frac is None:
        return _shaft_density(u, v, bone)
    cos_p, sin_p = math.cos(frac.phi), math.sin(frac.phi)
    s = (u - frac.u0) * cos_p + v * sin_p  # signed distance to the break line
    if frac.du or frac.dv:
        u2, v2 = u - frac.du, v - frac.dv
        s2 = (u2 - frac.u0) * cos_p + v2 * sin_p
        dens = _shaft_density(u, v, bone) * _ramp(-s) + _shaft_density(u2, v2, bone) * _ramp(s2)
    else:
        dens = _shaft_density(u, v, bone)
    if frac.line_depth:
        dens *= 1.0 - frac.line_depth * np.exp(-((s / frac.line_width) ** 2))
    for fu, fv, fa, fl in frac.fragments:
        cu, su = math.cos(fa), math.sin(fa)
        a = (u - fu) * cu + (v - fv) * su
        b = -(u - fu) * su + (v - fv) * cu
        da = np.maximum(np.abs(a) - fl, 0.0)
        dens *= 1.0 - 0.85 * np.exp(-(da * da + b * b) / frac.line_width**2)
    return dens


def _random_bones(rng: np.random.Generator, h: int, w: int, limb: tuple[float, ...]) -> list[_Bone]:
    """One to three long bones, roughly along the limb axis, centred inside the frame."""
    lcx, lcy, ltheta = limb[:3]
    scale = min(h, w)
    n = int(rng.integers(1, 4))
    half_w = float(rng.uniform(0.035, 0.09 if n == 1 else 0.06)) * scale
    spread = (2.6 + rng.uniform(0.0, 1.2)) * half_w
    along = float(rng.uniform(-0.12, 0.12)) * scale
    bones = []
    for i in range(n):
        offset = (i - (n - 1) / 2) * spread + rng.normal(0.0, 0.15 * half_w)
        shift = along + rng.normal(0.0, 0.06 * scale)
        cx = lcx + shift * np.cos(ltheta) - offset * np.sin(ltheta)
        cy = lcy + shift * np.sin(ltheta) + offset * np.cos(ltheta)
        knob = int(rng.choice([-1, 0, 1], p=[0.35, 0.3, 0.35]))
        bones.append(
            _Bone(
                cx=float(np.clip(cx, 0.2 * w, 0.8 * w)),
                cy=float(np.clip(cy, 0.2 * h, 0.8 * h)),
                angle=float(ltheta + rng.normal(0.0, 0.1)),
                half_len=float(rng.uniform(0.22, 0.45)) * scale,
                half_w=float(half_w * rng.uniform(0.75, 1.25)),
                inner=float(rng.uniform(0.5, 0.72)),
                marrow=float(rng.uniform(0.15, 0.4)),
                flare=float(rng.uniform(0.0, 0.35)),
                knob_end=knob,
                knob_a=float(rng.uniform(1.1, 1.6)),
                knob_b=float(rng.uniform(1.3, 1.9)),
            )
        )
    return bones


def _random_fracture(rng: np.random.Generator, bone: _Bone, kind: str, h: int, w: int) -> _Fracture:
    """Parameters of a visible break across `bone`, placed inside the frame."""
    scale = min(h, w)
    cos_a, sin_a = np.cos(bone.angle), np.sin(bone.angle)
    u0 = 0.0
    for _ in range(8):
        cand = float(rng.uniform(-0.45, 0.45)) * bone.half_len
        x, y = bone.cx + cand * cos_a, bone.cy + cand * sin_a
        if 0.12 * w < x < 0.88 * w and 0.12 * h < y < 0.88 * h:
            u0 = cand
            break
    hw = bone.half_w
    line_w = max(1.3, 0.007 * scale)
    side = float(rng.choice([-1.0, 1.0]))
    if kind == "transverse":
        return _Fracture(
            u0, rng.normal(0.0, 0.06), line_depth=rng.uniform(0.8, 0.95), line_width=line_w
        )
    if kind == "oblique":
        phi = side * rng.uniform(np.radians(25), np.radians(50))
        return _Fracture(u0, phi, line_depth=rng.uniform(0.8, 0.95), line_width=line_w)
    if kind == "gap":
        return _Fracture(
            u0,
            rng.normal(0.0, 0.12),
            du=max(3.0, rng.uniform(0.02, 0.045) * scale),
            dv=side * rng.uniform(0.05, 0.3) * hw,
        )
    if kind == "offset":
        return _Fracture(
            u0,
            rng.normal(0.0, 0.2),
            dv=side * rng.uniform(0.35, 0.7) * hw,
            line_depth=rng.uniform(0.5, 0.8),
            line_width=line_w,
        )
    # comminuted
    fragments = [
        (
            u0 + float(rng.normal(0.0, 0.5 * hw)),
            float(rng.uniform(-0.8, 0.8)) * hw,
            float(rng.uniform(0.0, np.pi)),
            float(rng.uniform(0.25, 0.6)) * hw,
        )
        for _ in range(int(rng.integers(3, 7)))
    ]
    return _Fracture(
        u0,
        side * rng.uniform(0.0, np.radians(35)),
        line_depth=rng.uniform(0.7, 0.9),
        line_width=line_w,
        fragments=fragments,
    )


def _add_bone(img: np.ndarray, bone: _Bone, frac: _Fracture | None, level: float) -> None:
    """Add `level` x density of `bone` to `img` in place.

    The bone is drawn on a small canvas in its own frame (axis along x), then rotated and
    placed into its bounding box in `img` with Pillow's affine transform.
    """
    h, w = img.shape
    ext_u = bone.half_len + bone.half_w * (bone.knob_a if bone.knob_end else 1.0) + 2.0
    ext_v = bone.half_w * max(bone.knob_b if bone.knob_end else 1.0, 1.0 + bone.flare) + 2.0
    if frac is not None:
        ext_u += abs(frac.du)
        ext_v += abs(frac.dv)
    u = np.arange(np.ceil(2 * ext_u), dtype=np.float32)[None, :] + np.float32(0.5 - ext_u)
    v = np.arange(np.ceil(2 * ext_v), dtype=np.float32)[:, None] + np.float32(0.5 - ext_v)
    canvas = Image.fromarray(np.ascontiguousarray(_bone_density(u, v, bone, frac)))

    cos_a, sin_a = math.cos(bone.angle), math.sin(bone.angle)
    half_x = abs(cos_a) * ext_u + abs(sin_a) * ext_v
    half_y = abs(sin_a) * ext_u + abs(cos_a) * ext_v
    x0, x1 = max(int(bone.cx - half_x), 0), min(int(np.ceil(bone.cx + half_x)) + 1, w)
    y0, y1 = max(int(bone.cy - half_y), 0), min(int(np.ceil(bone.cy + half_y)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    # Output pixel (x, y) of the box has its centre at image coordinate (x0 + x, y0 + y);
    # Pillow samples at pixel centres (+0.5) on both sides.
    ox, oy = x0 - 0.5 - bone.cx, y0 - 0.5 - bone.cy
    inverse = (
        cos_a,
        sin_a,
        ox * cos_a + oy * sin_a + ext_u,
        -sin_a,
        cos_a,
        oy * cos_a - ox * sin_a + ext_v,
    )
    placed = canvas.transform(
        (x1 - x0, y1 - y0), Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR
    )
    img[y0:y1, x0:x1] += np.float32(level) * np.asarray(placed)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Unit-ish, spatially smooth noise: coarse Gaussian noise upsampled bicubically."""
    coarse = rng.standard_normal((max(h // cell, 2), max(w // cell, 2)), dtype=np.float32)
    return np.array(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def draw_phantom(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    fractured: bool,
    *,
    fracture_kind: str | None = None,
) -> Image.Image:
    """Draw a radiograph-like phantom (mode "L"); `size` is an int or (width, height).

    A fractured phantom carries a visible break of `fracture_kind` (one of FRACTURE_KINDS,
    random if None) across one bone. The random draws for the break come last, so the same
    rng state drawn with and without a fracture gives the same image away from the break.
    """
    if fracture_kind is not None:
        if not fractured:
            raise ValueError("fracture_kind given for a non-fractured phantom")
        if fracture_kind not in FRACTURE_KINDS:
            raise ValueError(f"unknown fracture_kind {fracture_kind!r}; use {FRACTURE_KINDS}")
    h, w = _hw(size)
    scale = min(h, w)

    # Python floats throughout keep the pixel arithmetic in float32.
    limb = (
        w * float(rng.uniform(0.4, 0.6)),
        h * float(rng.uniform(0.4, 0.6)),
        float(rng.uniform(0.0, np.pi)),
        float(rng.uniform(0.7, 1.2)) * max(h, w),
        float(rng.uniform(0.2, 0.38)) * scale,
    )
    bones = _random_bones(rng, h, w, limb)
    background, tissue_level, bone_level, grad_x, grad_y, vignette, noise_sigma, grain_sigma = (
        float(x)
        for x in rng.uniform(
            (5.0, 45.0, 110.0, -0.25, -0.25, 0.0, 1.5, 1.0),
            (25.0, 85.0, 160.0, 0.25, 0.25, 0.5, 5.0, 4.0),
        )
    )
    # Soft tissue is smooth: drawn at a quarter of the resolution, then upsampled.
    hl, wl = max(h // 4, 8), max(w // 4, 8)
    mottle = _smooth_noise(rng, hl, wl, cell=max(min(hl, wl) // 6, 2))
    noise = rng.random((h, w), dtype=np.float32)
    grain = _smooth_noise(rng, h, w, cell=3)

    frac_bone = frac = None
    if fractured:
        frac_bone = int(rng.integers(len(bones)))
        kind = fracture_kind or str(rng.choice(FRACTURE_KINDS))
        frac = _random_fracture(rng, bones[frac_bone], kind, h, w)

    lcx, lcy, ltheta, lhalf_len, lhalf_w = limb
    xs = (np.arange(wl, dtype=np.float32)[None, :] + 0.5) * (w / wl) - np.float32(lcx + 0.5)
    ys = (np.arange(hl, dtype=np.float32)[:, None] + 0.5) * (h / hl) - np.float32(lcy + 0.5)
    cos_t, sin_t = math.cos(ltheta), math.sin(ltheta)
    lu = (xs * cos_t + ys * sin_t) * (1.0 / lhalf_len)
    lv = (ys * cos_t - xs * sin_t) * (1.0 / lhalf_w)
    tissue = np.sqrt(np.maximum(1.0 - lu * lu - lv * lv, 0.0)) * (1.0 + 0.08 * mottle)
    low = Image.fromarray(background + tissue_level * tissue)
    img = np.array(low.resize((w, h), Image.Resampling.BICUBIC))
    for i, bone in enumerate(bones):
        _add_bone(img, bone, frac if i == frac_bone else None, bone_level)

    xn = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    yn = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    img *= (1.0 + grad_x * xn - vignette * xn * xn) + (grad_y * yn - vignette * yn * yn)
    noise -= 0.5
    noise *= noise_sigma * math.sqrt(12.0)  # uniform noise of standard deviation noise_sigma
    img += noise
    grain *= grain_sigma
    img += grain
    img += 0.5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def draw_outlier(rng: np.random.Generator, size: int | tuple[int, int]) -> Image.Image:
    """Draw a colourful, photo-like non-X-ray image (mode "RGB")."""
    h, w = _hw(size)
    hs, ws = max(h // 2, 16), max(w // 2, 16)  # drawn at half resolution, then upsampled
    scale = min(hs, ws)
    xn = np.linspace(0.0, 1.0, ws, dtype=np.float32)[None, :, None]
    yn = np.linspace(0.0, 1.0, hs, dtype=np.float32)[:, None, None]
    direction = float(rng.uniform(0.0, 2 * np.pi))
    t = math.cos(direction) * xn + math.sin(direction) * yn
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2 = _saturated_colour(rng), _saturated_colour(rng)
    img = c1 + t * (c2 - c1)

    for _ in range(int(rng.integers(5, 13))):
        colour = _saturated_colour(rng)
        cx, cy = float(rng.uniform(0, ws)), float(rng.uniform(0, hs))
        ra, rb = (float(r) * scale for r in rng.uniform(0.05, 0.3, size=2))
        ang = float(rng.uniform(0.0, np.pi))
        soft = rng.uniform() < 0.5
        opacity = float(rng.uniform(0.7, 1.0))
        ext = max(ra, rb) + 2
        x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 1, ws)
        y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 1, hs)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        a = (dx * math.cos(ang) + dy * math.sin(ang)) * (1.0 / ra)
        b = (dy * math.cos(ang) - dx * math.sin(ang)) * (1.0 / rb)
        r2 = a * a + b * b
        edge = min(ra, rb)  # a soft glow, or a disc with a one-pixel edge
        alpha = np.exp(-2.5 * r2) if soft else np.clip((1.0 - np.sqrt(r2)) * edge, 0.0, 1.0)
        alpha = alpha[:, :, None] * opacity
        patch = img[y0:y1, x0:x1]
        patch += alpha * (colour - patch)

    img += 4.0 * rng.standard_normal((hs, ws, 1), dtype=np.float32)
    small = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return small.resize((w, h), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One file written, as recorded in planted.csv, plus what is needed to derive copies."""

    path: str
    kind: str
    label: str
    true_label: str | None
    split: str | None = None
    patient_id: str | None = None
    detail: str = ""
    source_path: str | None = None
    fmt: str = "PNG"
    quality: int | None = None
    region: str | None = None  # mura only

    def record(self) -> dict[str, str | None]:
        return {c: getattr(self, c) for c in RECORD_COLUMNS}


def _is_negative(cls: str) -> bool:
    return bool(_NEGATIVE_WORDS.search(cls))


def _fracture_kind_for(cls: str) -> str | None:
    """The fracture kind a class implies when its name is one (case-insensitive)."""
    key = cls.strip().lower()
    return key if key in FRACTURE_KINDS else None


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items by fractions (largest remainder), each part >= 1 when n allows."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(counts):
        for i, c in enumerate(counts):
            if c == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return counts


def _encode(
    img: Image.Image, fmt: str, quality: int | None = None, png_level: int = _PNG_LEVEL
) -> bytes:
    """Encode deterministically (fixed encoder parameters, no metadata)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False, subsampling=2)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=png_level, optimize=False)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=80, method=4, lossless=False)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def _detail(*parts: str) -> str:
    return ";".join(p for p in parts if p)


def _fmt_detail(fmt: str, quality: int | None) -> str:
    return f"quality={quality}" if fmt == "JPEG" else f"format={fmt.lower()}"


class _Writer:
    """Writes the files of one dataset and keeps their records."""

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
        self.entries: list[_Entry] = []
        self._names: set[str] = set()
        self._next_patient = 1
        self._next_study: dict[str, int] = {}

    # -- naming --------------------------------------------------------------------------

    def _name(self) -> str:
        """A fresh random file stem that says nothing about what the file is."""
        while True:
            stem = f"{self.rng.integers(16**10):010x}"
            if stem not in self._names:
                self._names.add(stem)
                return stem

    def new_patient(self) -> str:
        """A fresh patient id: "P00001" style, or "patient00001" (the folder name) for mura."""
        n, self._next_patient = self._next_patient, self._next_patient + 1
        return f"patient{n:05d}" if self.layout == "mura" else f"P{n:05d}"

    def new_study_dir(self, split: str, region: str, patient: str, label: str) -> PurePosixPath:
        n = self._next_study.get(patient, 0) + 1
        self._next_study[patient] = n
        return PurePosixPath(split, f"XR_{region}", patient, f"study{n}_{label}")

    def folder(self, label: str, split: str | None) -> PurePosixPath:
        """Folder of a file of class `label` in `split` (all layouts but mura)."""
        if self.layout == "class":
            return PurePosixPath(label)
        if self.layout == "split-class":
            return PurePosixPath(split, label)
        if self.layout == "class-split":
            return PurePosixPath(label, split)
        return PurePosixPath("images")

    # -- writing -------------------------------------------------------------------------

    def write(self, folder: PurePosixPath, data: bytes, ext: str, entry: _Entry) -> None:
        rel = folder / f"{self._name()}{ext}"
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry.path = rel.as_posix()
        self.entries.append(entry)

    def choose_format(self, png: bool) -> tuple[str, int | None]:
        if png:
            return "PNG", None
        return "JPEG", int(self.rng.integers(90, 96))

    def phantom(self, label: str) -> tuple[Image.Image, str]:
        """A phantom drawn for class `label`, with a detail string saying what it shows."""
        if self.layout == "mura":
            fractured = label == "positive"
            kind = None
        else:
            fractured = not _is_negative(label)
            kind = _fracture_kind_for(label) if fractured else None
        if fractured and kind is None:
            kind = str(self.rng.choice(FRACTURE_KINDS))
        img = draw_phantom(self.rng, self.size, fractured, fracture_kind=kind)
        return img, f"fracture={kind or 'none'}"

    def original(
        self,
        folder: PurePosixPath,
        label: str,
        split: str | None,
        png: bool,
        patient: str | None = None,
        region: str | None = None,
    ) -> None:
        img, what = self.phantom(label)
        fmt, quality = self.choose_format(png)
        entry = _Entry(
            path="",
            kind="original",
            label=label,
            true_label=label,
            split=split,
            patient_id=patient,
            detail=_detail(what, _fmt_detail(fmt, quality)),
            fmt=fmt,
            quality=quality,
            region=region,
        )
        self.write(folder, _encode(img, fmt, quality), _EXT[fmt], entry)


def _write_originals(w: _Writer, n_per_class: int) -> None:
    """Write the originals of every layout but mura (csv: patients of 1-3 images)."""
    n_total = n_per_class * len(w.classes)
    png = np.zeros(n_total, dtype=bool)
    png[: round(w.png_fraction * n_total)] = True
    w.rng.shuffle(png)
    names, fractions = _LAYOUT_SPLITS[w.layout]
    i = 0
    for label in w.classes:
        for split, count in zip(names, _split_counts(n_per_class, fractions), strict=True):
            patient, left = None, 0
            for _ in range(count):
                if w.layout == "csv" and left == 0:
                    patient, left = w.new_patient(), int(w.rng.integers(1, 4))
                left -= 1
                w.original(w.folder(label, split), label, split, bool(png[i]), patient)
                i += 1


def _write_mura_originals(w: _Writer, n_per_label: int) -> None:
    """Patients with 1-3 studies of 1-3 images until each label has n_per_label images."""
    need = dict.fromkeys(_MURA_LABELS, n_per_label)
    while any(need.values()):
        split = "train" if w.rng.uniform() < 0.8 else "valid"
        region = str(w.rng.choice(_MURA_REGIONS))
        patient = w.new_patient()
        for _ in range(int(w.rng.integers(1, 4))):
            open_labels = [lab for lab in _MURA_LABELS if need[lab]]
            if not open_labels:
                break
            label = str(w.rng.choice(open_labels))
            folder = w.new_study_dir(split, region, patient, label)
            for _ in range(min(int(w.rng.integers(1, 4)), need[label])):
                w.original(folder, label, split, True, patient, region)
                need[label] -= 1


def _kind_applies(kind: str, layout: str, n_classes: int) -> bool:
    if kind == "cross_split":
        return layout != "class"
    if kind == "other_class":
        return n_classes >= 2
    if kind == "webp":
        return bool(features.check("webp"))
    return True


def _load(root: Path, entry: _Entry) -> Image.Image:
    with Image.open(root / entry.path) as img:
        img.load()
        return img


def _plant(w: _Writer, kind: str, src: _Entry | None) -> None:
    """Write one planted file of `kind`, derived from `src` for the sourced kinds."""
    rng = w.rng
    mura = w.layout == "mura"
    labels = list(_MURA_LABELS) if mura else w.classes
    if src is None:  # filed next to a random original ("host")
        host = w.entries[int(rng.integers(len(w.entries)))]
        while host.kind != "original":
            host = w.entries[int(rng.integers(len(w.entries)))]
        label, split = host.label, host.split
        patient = host.patient_id if mura else None
        if w.layout == "csv":
            patient = w.new_patient()
        folder = PurePosixPath(host.path).parent if mura else w.folder(label, split)
        entry = _Entry(
            path="", kind=kind, label=label, true_label=label, split=split, patient_id=patient
        )
        if kind == "outlier":
            fmt, quality = w.choose_format(mura or rng.uniform() < w.png_fraction)
            entry.true_label = None
            entry.detail = _fmt_detail(fmt, quality)
            data = _encode(draw_outlier(rng, w.size), fmt, quality)
        elif kind in ("gif", "webp"):
            fmt = kind.upper()
            img, entry.detail = w.phantom(label)
            data = _encode(img, fmt)
        elif kind == "corrupt":
            fmt, entry.true_label = "JPEG", None
            if rng.uniform() < 0.5:
                data, entry.detail = rng.bytes(int(rng.integers(500, 4000))), "random-bytes"
            else:
                data, entry.detail = b"<html><body>404 Not Found</body></html>\n", "text"
        else:  # zero_byte
            fmt, data, entry.true_label = "PNG", b"", None
        w.write(folder, data, _EXT[fmt], entry)
        return

    label, split = src.label, src.split
    folder = PurePosixPath(src.path).parent if mura else None
    fmt, quality, detail = src.fmt, src.quality, ""
    src_bytes = (w.root / src.path).read_bytes()
    if kind in ("exact_copy", "truncated"):
        data = src_bytes
        if kind == "truncated":
            keep = float(rng.uniform(0.4, 0.6))
            data, detail = src_bytes[: int(len(src_bytes) * keep)], f"kept={keep:.2f}"
    elif kind in ("other_class", "cross_split"):
        if kind == "other_class":
            label = str(rng.choice([c for c in labels if c != src.label]))
            detail = f"from={src.label}"
        else:
            names = _LAYOUT_SPLITS[w.layout][0]
            split = str(rng.choice([s for s in names if s != src.split]))
            detail = f"from={src.split}"
        if mura:
            folder = w.new_study_dir(split, src.region, src.patient_id, label)
        # Pixel-exact: JPEG cannot be re-saved without loss, so its bytes are copied.
        data = (
            src_bytes
            if fmt == "JPEG"
            else _encode(_load(w.root, src), "PNG", png_level=_PNG_RESAVE_LEVEL)
        )
    else:
        img = _load(w.root, src)
        if kind == "reencoded":
            q = int(rng.integers(50, 86))
            if mura:  # MURA is PNG only: keep the JPEG-degraded pixels in a PNG
                img = Image.open(io.BytesIO(_encode(img, "JPEG", q)))
                fmt, quality, detail = "PNG", None, f"quality={q};format=png"
            elif fmt == "PNG" or rng.uniform() < 0.5:
                fmt, quality, detail = "JPEG", q, f"quality={q}"
            else:
                fmt, quality, detail = "PNG", None, "format=png"
        elif kind == "resized":
            factor = round(float(rng.uniform(0.5, 0.8)), 2)
            new = (max(round(img.width * factor), 1), max(round(img.height * factor), 1))
            img, detail = img.resize(new, Image.Resampling.LANCZOS), f"scale={factor:.2f}"
        elif kind == "cropped":
            frac = round(float(rng.uniform(0.03, 0.10)), 2)
            dw, dh = max(round(img.width * frac), 1), max(round(img.height * frac), 1)
            left, top = int(rng.integers(dw + 1)), int(rng.integers(dh + 1))
            box = (left, top, img.width - (dw - left), img.height - (dh - top))
            img, detail = img.crop(box), f"crop={frac:.2f}"
        elif kind == "flipped":
            if rng.uniform() < 0.5:
                img, detail = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "flip=horizontal"
            else:
                img, detail = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "flip=vertical"
        elif kind == "rotated90":
            k = int(rng.integers(1, 4))
            ops = (
                Image.Transpose.ROTATE_90,
                Image.Transpose.ROTATE_180,
                Image.Transpose.ROTATE_270,
            )
            img, detail = img.transpose(ops[k - 1]), f"angle={90 * k}"
        elif kind == "rotated_small":
            angle = round(float(rng.choice([-1, 1]) * rng.uniform(2.0, 10.0)), 1)
            arr = np.asarray(img)
            border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
            fill = int(np.median(border))
            img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
            detail = f"angle={angle:.1f}"
        else:  # brightness
            lo, hi = (0.8, 0.9) if rng.uniform() < 0.5 else (1.1, 1.2)
            factor = round(float(rng.uniform(lo, hi)), 2)
            arr = np.asarray(img, dtype=np.float32) * factor
            img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
            detail = f"factor={factor:.2f}"
        data = _encode(img, fmt, quality)
    entry = _Entry(
        path="",
        kind=kind,
        label=label,
        true_label=src.true_label,
        split=split,
        patient_id=src.patient_id,
        detail=detail,
        source_path=src.path,
        fmt=fmt,
        quality=quality,
        region=src.region,
    )
    w.write(folder if folder is not None else w.folder(label, split), data, _EXT[fmt], entry)


def _renumber_mura(w: _Writer) -> None:
    """Name the files of each study image1..K in random order, so the planted files added
    to a study cannot be told from its originals by their number."""
    by_study: dict[str, list[_Entry]] = {}
    for e in w.entries:
        by_study.setdefault(PurePosixPath(e.path).parent.as_posix(), []).append(e)
    renamed: dict[str, str] = {}
    for study, entries in by_study.items():
        order = w.rng.permutation(len(entries))
        for k, i in enumerate(order, start=1):
            e = entries[i]
            new = f"{study}/image{k}{PurePosixPath(e.path).suffix}"
            (w.root / e.path).rename(w.root / new)
            renamed[e.path] = new
    for e in w.entries:
        e.path = renamed[e.path]
        if e.source_path is not None:
            e.source_path = renamed[e.source_path]


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def _prepare_root(root: Path) -> None:
    """Create `root`, or empty it if it holds a previously generated set; refuse otherwise."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not (root / PLANTED_CSV).is_file():
            raise FileExistsError(
                f"{root} is not empty and has no {PLANTED_CSV}, so it is not a generated "
                "synthetic dataset; refusing to overwrite it (choose an empty or new folder)"
            )
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    root.mkdir(parents=True, exist_ok=True)
    # Mark the folder as generated at once, so an interrupted run can be regenerated.
    _write_csv_atomic(pd.DataFrame(columns=list(RECORD_COLUMNS)), root / PLANTED_CSV)


def _check_args(
    layout: str,
    classes: Sequence[str],
    n_per_class: int,
    png_fraction: float,
    plant_counts: Mapping[str, int] | None,
) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    if isinstance(classes, str) or not classes:
        raise ValueError("classes must be a non-empty sequence of class names")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique: {list(classes)}")
    for c in classes:
        if not c or c.strip() != c or c in (".", "..") or "/" in c or "\\" in c:
            raise ValueError(f"invalid class folder name {c!r}")
    if n_per_class < 1:
        raise ValueError("n_per_class must be at least 1")
    if not 0.0 <= png_fraction <= 1.0:
        raise ValueError("png_fraction must be within [0, 1]")
    unknown = set(plant_counts or {}) - set(PLANTED_KINDS)
    if unknown:
        raise ValueError(f"unknown planted kinds {sorted(unknown)}; use {PLANTED_KINDS}")
    if any(int(v) < 0 for v in (plant_counts or {}).values()):
        raise ValueError("plant_counts must not be negative")


def generate_dataset(
    root: Path,
    *,
    layout: str = "split-class",
    classes: Sequence[str] = ("fractured", "not fractured"),
    n_per_class: int = 20,
    image_size: int | tuple[int, int] = 256,
    png_fraction: float = 0.3,
    plant: bool = True,
    plant_counts: Mapping[str, int] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Write a synthetic dataset under `root` and return its record (also `root/planted.csv`).

    One record row per file written, with columns RECORD_COLUMNS. `plant_counts`, when given,
    is the full number of planted files per kind (missing kinds: none); by default every kind
    that makes sense for the layout is planted max(1, n_originals // 20) times. Output is
    deterministic for a given seed. Raises FileExistsError if `root` holds files but no
    planted.csv (a previously generated set is deleted and regenerated).
    """
    root = Path(root)
    _check_args(layout, classes, n_per_class, png_fraction, plant_counts)
    _prepare_root(root)
    w = _Writer(root, layout, classes, image_size, png_fraction, np.random.default_rng(seed))
    if layout == "mura":
        _write_mura_originals(w, n_per_class)
    else:
        _write_originals(w, n_per_class)

    if plant:
        originals = list(w.entries)
        n_labels = len(_MURA_LABELS) if layout == "mura" else len(classes)
        if plant_counts is None:
            counts = dict.fromkeys(PLANTED_KINDS, max(1, len(originals) // 20))
        else:
            counts = {k: int(plant_counts.get(k, 0)) for k in PLANTED_KINDS}
        pool: list[_Entry] = []
        for kind in PLANTED_KINDS:
            if not _kind_applies(kind, layout, n_labels):
                continue
            for _ in range(counts[kind]):
                src = None
                if kind in _SOURCED_KINDS:
                    if not pool:  # each original is used once before any is reused
                        pool = [originals[i] for i in w.rng.permutation(len(originals))]
                    src = pool.pop()
                _plant(w, kind, src)

    if layout == "mura":
        _renumber_mura(w)
    df = pd.DataFrame([e.record() for e in w.entries], columns=list(RECORD_COLUMNS))
    if layout == "csv":
        _write_csv_atomic(df[["path", "label", "split", "patient_id"]], root / LABELS_CSV)
    _write_csv_atomic(df, root / PLANTED_CSV)
    return df
