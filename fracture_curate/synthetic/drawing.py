"""Drawing: radiograph-like phantoms of long bones, and colourful photo-like outlier images.

Pure numpy and Pillow. A phantom is a soft-tissue blob with one to three hollow long bones,
optionally one of them broken, under smooth noise and film grain. Bones are drawn in their own
frame, with ``u`` along the bone axis and ``v`` across it, in pixels from the bone's centre.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fracture_curate.classes import NORMAL, class_reading
from fracture_curate.errors import ConfigError

FRACTURE_KINDS: tuple[str, ...] = ("transverse", "oblique", "gap", "offset", "comminuted")
MIN_SIDE = 16  #: the smallest image side drawn, in pixels


@dataclass
class _Bone:
    centre_x: float
    centre_y: float
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


def image_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image ``size``: an int (square) or a PIL-style (width, height)."""
    if isinstance(size, (int, np.integer)):
        width = height = int(size)
    else:
        width, height = (int(side) for side in size)
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ConfigError(
            f"image size must be at least {MIN_SIDE}x{MIN_SIDE} (an int or (width, height)), "
            f"got {size!r}"
        )
    return height, width


def draw_phantom(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    fractured: bool,
    *,
    fracture_kind: str | None = None,
) -> Image.Image:
    """Draw a radiograph-like phantom (mode "L"); ``size`` is an int or (width, height).

    A fractured phantom carries a visible break of ``fracture_kind`` (one of FRACTURE_KINDS,
    random if None) across one bone. The random draws for the break come last, so the same
    rng state drawn with and without a fracture gives the same image away from the break.
    """
    if fracture_kind is not None:
        if not fractured:
            raise ConfigError("fracture_kind given for a non-fractured phantom; pass None")
        if fracture_kind not in FRACTURE_KINDS:
            raise ConfigError(
                f"unknown fracture_kind {fracture_kind!r}; choose one of "
                f"{', '.join(FRACTURE_KINDS)}"
            )
    height, width = image_shape(size)
    scale = min(height, width)

    # Python floats throughout keep the pixel arithmetic in float32.
    limb = (
        width * float(rng.uniform(0.4, 0.6)),
        height * float(rng.uniform(0.4, 0.6)),
        float(rng.uniform(0.0, np.pi)),
        float(rng.uniform(0.7, 1.2)) * max(height, width),
        float(rng.uniform(0.2, 0.38)) * scale,
    )
    bones = _random_bones(rng, height, width, limb)
    background, tissue_level, bone_level, grad_x, grad_y, vignette, noise_sigma, grain_sigma = (
        float(value)
        for value in rng.uniform(
            (5.0, 45.0, 110.0, -0.25, -0.25, 0.0, 1.5, 1.0),
            (25.0, 85.0, 160.0, 0.25, 0.25, 0.5, 5.0, 4.0),
        )
    )
    # Soft tissue is smooth: drawn at a quarter of the resolution, then upsampled.
    low_height, low_width = max(height // 4, 8), max(width // 4, 8)
    mottle = smooth_noise(rng, low_height, low_width, cell=max(min(low_height, low_width) // 6, 2))
    noise = rng.random((height, width), dtype=np.float32)
    grain = smooth_noise(rng, height, width, cell=3)

    broken_bone = fracture = None
    if fractured:
        broken_bone = int(rng.integers(len(bones)))
        kind = fracture_kind or str(rng.choice(FRACTURE_KINDS))
        fracture = _random_fracture(rng, bones[broken_bone], kind, height, width)

    limb_x, limb_y, limb_angle, limb_half_len, limb_half_w = limb
    xs = (np.arange(low_width, dtype=np.float32)[None, :] + 0.5) * (width / low_width)
    ys = (np.arange(low_height, dtype=np.float32)[:, None] + 0.5) * (height / low_height)
    xs -= np.float32(limb_x + 0.5)
    ys -= np.float32(limb_y + 0.5)
    cos_t, sin_t = math.cos(limb_angle), math.sin(limb_angle)
    along = (xs * cos_t + ys * sin_t) * (1.0 / limb_half_len)
    across = (ys * cos_t - xs * sin_t) * (1.0 / limb_half_w)
    tissue = np.sqrt(np.maximum(1.0 - along * along - across * across, 0.0))
    tissue *= 1.0 + 0.08 * mottle
    low = Image.fromarray(background + tissue_level * tissue)
    img = np.array(low.resize((width, height), Image.Resampling.BICUBIC))
    for index, bone in enumerate(bones):
        _add_bone(img, bone, fracture if index == broken_bone else None, bone_level)

    xn = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    yn = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    img *= (1.0 + grad_x * xn - vignette * xn * xn) + (grad_y * yn - vignette * yn * yn)
    noise -= 0.5
    noise *= noise_sigma * math.sqrt(12.0)  # uniform noise of standard deviation noise_sigma
    img += noise
    grain *= grain_sigma
    img += grain
    img += 0.5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_class_phantom(
    rng: np.random.Generator, size: int | tuple[int, int], label: str
) -> tuple[Image.Image, str]:
    """A phantom for class ``label`` and a detail saying what it shows (``fracture=<kind>``).

    A class that reads as normal (:func:`~fracture_curate.classes.class_reading`) is drawn
    without a fracture; any other with one, of the kind the class names if it names one.
    """
    fractured = class_reading(label) != NORMAL
    kind = _named_fracture_kind(label) if fractured else None
    if fractured and kind is None:
        kind = str(rng.choice(FRACTURE_KINDS))
    image = draw_phantom(rng, size, fractured, fracture_kind=kind)
    return image, f"fracture={kind or 'none'}"


def draw_outlier(rng: np.random.Generator, size: int | tuple[int, int]) -> Image.Image:
    """Draw a colourful, photo-like non-X-ray image (mode "RGB")."""
    height, width = image_shape(size)
    small_h, small_w = max(height // 2, 16), max(width // 2, 16)  # drawn at half resolution
    scale = min(small_h, small_w)
    xn = np.linspace(0.0, 1.0, small_w, dtype=np.float32)[None, :, None]
    yn = np.linspace(0.0, 1.0, small_h, dtype=np.float32)[:, None, None]
    direction = float(rng.uniform(0.0, 2 * np.pi))
    ramp = math.cos(direction) * xn + math.sin(direction) * yn
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    start, end = _saturated_colour(rng), _saturated_colour(rng)
    img = start + ramp * (end - start)

    for _ in range(int(rng.integers(5, 13))):
        colour = _saturated_colour(rng)
        centre_x, centre_y = float(rng.uniform(0, small_w)), float(rng.uniform(0, small_h))
        radius_a, radius_b = (float(r) * scale for r in rng.uniform(0.05, 0.3, size=2))
        angle = float(rng.uniform(0.0, np.pi))
        soft = rng.uniform() < 0.5
        opacity = float(rng.uniform(0.7, 1.0))
        extent = max(radius_a, radius_b) + 2
        x0, x1 = max(int(centre_x - extent), 0), min(int(centre_x + extent) + 1, small_w)
        y0, y1 = max(int(centre_y - extent), 0), min(int(centre_y + extent) + 1, small_h)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(centre_x)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(centre_y)
        along = (dx * math.cos(angle) + dy * math.sin(angle)) * (1.0 / radius_a)
        across = (dy * math.cos(angle) - dx * math.sin(angle)) * (1.0 / radius_b)
        r2 = along * along + across * across
        edge = min(radius_a, radius_b)  # a soft glow, or a disc with a one-pixel edge
        alpha = np.exp(-2.5 * r2) if soft else np.clip((1.0 - np.sqrt(r2)) * edge, 0.0, 1.0)
        alpha = alpha[:, :, None] * opacity
        patch = img[y0:y1, x0:x1]
        patch += alpha * (colour - patch)

    img += 4.0 * rng.standard_normal((small_h, small_w, 1), dtype=np.float32)
    small = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A random vivid RGB colour, as float32 values in [0, 255]."""
    red, green, blue = colorsys.hsv_to_rgb(
        rng.uniform(), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    )
    return np.array([red, green, blue], dtype=np.float32) * 255.0


def _named_fracture_kind(label: str) -> str | None:
    """The fracture kind a class name is (case-insensitive), if it is one."""
    key = label.strip().lower()
    return key if key in FRACTURE_KINDS else None


def _ramp(x: np.ndarray) -> np.ndarray:
    """Anti-aliased step: 0 for x <= -0.5 px, 1 for x >= 0.5 px."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _shaft_density(u: np.ndarray, v: np.ndarray, bone: _Bone) -> np.ndarray:
    """Projected density of a rounded hollow rod (plus knob) in bone-local coordinates."""
    along = np.abs(u)
    beyond = np.maximum(along - bone.half_len, 0.0)
    width = bone.half_w * (
        1.0 + bone.flare * (np.minimum(along, bone.half_len) / bone.half_len) ** 2
    )
    r2 = (beyond * beyond + v * v) / (width * width)
    outer = np.sqrt(np.maximum(1.0 - r2, 0.0))
    inner = np.sqrt(np.maximum(bone.inner**2 - r2, 0.0))
    density = outer - (1.0 - bone.marrow) * inner
    if bone.knob_end:
        knob_u = (u - bone.knob_end * bone.half_len) * (1.0 / (bone.knob_a * bone.half_w))
        knob_v = v * (1.0 / (bone.knob_b * bone.half_w))
        knob_r2 = knob_u * knob_u + knob_v * knob_v
        knob = 0.9 * np.sqrt(np.maximum(1.0 - knob_r2, 0.0)) - 0.35 * np.sqrt(
            np.maximum(0.8 - knob_r2, 0.0)
        )
        density = np.maximum(density, knob)
    return density


def _bone_density(
    u: np.ndarray, v: np.ndarray, bone: _Bone, fracture: _Fracture | None
) -> np.ndarray:
    """Density of one bone, with its fracture if any."""
    if fracture is None:
        return _shaft_density(u, v, bone)
    cos_p, sin_p = math.cos(fracture.phi), math.sin(fracture.phi)
    to_break = (u - fracture.u0) * cos_p + v * sin_p  # signed distance to the break line
    if fracture.du or fracture.dv:
        u2, v2 = u - fracture.du, v - fracture.dv
        to_break2 = (u2 - fracture.u0) * cos_p + v2 * sin_p
        near = _shaft_density(u, v, bone) * _ramp(-to_break)
        far = _shaft_density(u2, v2, bone) * _ramp(to_break2)  # the displaced distal part
        density = near + far
    else:
        density = _shaft_density(u, v, bone)
    if fracture.line_depth:
        density *= 1.0 - fracture.line_depth * np.exp(-((to_break / fracture.line_width) ** 2))
    for frag_u, frag_v, frag_angle, frag_half_len in fracture.fragments:
        cos_f, sin_f = math.cos(frag_angle), math.sin(frag_angle)
        along = (u - frag_u) * cos_f + (v - frag_v) * sin_f
        across = -(u - frag_u) * sin_f + (v - frag_v) * cos_f
        beyond = np.maximum(np.abs(along) - frag_half_len, 0.0)
        density *= 1.0 - 0.85 * np.exp(
            -(beyond * beyond + across * across) / fracture.line_width**2
        )
    return density


def _random_bones(
    rng: np.random.Generator, height: int, width: int, limb: tuple[float, ...]
) -> list[_Bone]:
    """One to three long bones, roughly along the limb axis, centred inside the frame."""
    limb_x, limb_y, limb_angle = limb[:3]
    scale = min(height, width)
    count = int(rng.integers(1, 4))
    half_w = float(rng.uniform(0.035, 0.09 if count == 1 else 0.06)) * scale
    spread = (2.6 + rng.uniform(0.0, 1.2)) * half_w
    along = float(rng.uniform(-0.12, 0.12)) * scale
    bones = []
    for i in range(count):
        offset = (i - (count - 1) / 2) * spread + rng.normal(0.0, 0.15 * half_w)
        shift = along + rng.normal(0.0, 0.06 * scale)
        centre_x = limb_x + shift * np.cos(limb_angle) - offset * np.sin(limb_angle)
        centre_y = limb_y + shift * np.sin(limb_angle) + offset * np.cos(limb_angle)
        knob = int(rng.choice([-1, 0, 1], p=[0.35, 0.3, 0.35]))
        bones.append(
            _Bone(
                centre_x=float(np.clip(centre_x, 0.2 * width, 0.8 * width)),
                centre_y=float(np.clip(centre_y, 0.2 * height, 0.8 * height)),
                angle=float(limb_angle + rng.normal(0.0, 0.1)),
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


def _random_fracture(
    rng: np.random.Generator, bone: _Bone, kind: str, height: int, width: int
) -> _Fracture:
    """Parameters of a visible break across ``bone``, placed inside the frame."""
    scale = min(height, width)
    cos_a, sin_a = np.cos(bone.angle), np.sin(bone.angle)
    u0 = 0.0
    for _ in range(8):
        candidate = float(rng.uniform(-0.45, 0.45)) * bone.half_len
        x, y = bone.centre_x + candidate * cos_a, bone.centre_y + candidate * sin_a
        if 0.12 * width < x < 0.88 * width and 0.12 * height < y < 0.88 * height:
            u0 = candidate
            break
    half_w = bone.half_w
    line_width = max(1.3, 0.007 * scale)
    side = float(rng.choice([-1.0, 1.0]))
    if kind == "transverse":
        return _Fracture(
            u0, rng.normal(0.0, 0.06), line_depth=rng.uniform(0.8, 0.95), line_width=line_width
        )
    if kind == "oblique":
        phi = side * rng.uniform(np.radians(25), np.radians(50))
        return _Fracture(u0, phi, line_depth=rng.uniform(0.8, 0.95), line_width=line_width)
    if kind == "gap":
        return _Fracture(
            u0,
            rng.normal(0.0, 0.12),
            du=max(3.0, rng.uniform(0.02, 0.045) * scale),
            dv=side * rng.uniform(0.05, 0.3) * half_w,
        )
    if kind == "offset":
        return _Fracture(
            u0,
            rng.normal(0.0, 0.2),
            dv=side * rng.uniform(0.35, 0.7) * half_w,
            line_depth=rng.uniform(0.5, 0.8),
            line_width=line_width,
        )
    # comminuted
    fragments = [
        (
            u0 + float(rng.normal(0.0, 0.5 * half_w)),
            float(rng.uniform(-0.8, 0.8)) * half_w,
            float(rng.uniform(0.0, np.pi)),
            float(rng.uniform(0.25, 0.6)) * half_w,
        )
        for _ in range(int(rng.integers(3, 7)))
    ]
    return _Fracture(
        u0,
        side * rng.uniform(0.0, np.radians(35)),
        line_depth=rng.uniform(0.7, 0.9),
        line_width=line_width,
        fragments=fragments,
    )


def _add_bone(img: np.ndarray, bone: _Bone, fracture: _Fracture | None, level: float) -> None:
    """Add ``level`` x density of ``bone`` to ``img`` in place.

    The bone is drawn on a small canvas in its own frame (axis along x), then rotated and
    placed into its bounding box in ``img`` with Pillow's affine transform.
    """
    height, width = img.shape
    ext_u = bone.half_len + bone.half_w * (bone.knob_a if bone.knob_end else 1.0) + 2.0
    ext_v = bone.half_w * max(bone.knob_b if bone.knob_end else 1.0, 1.0 + bone.flare) + 2.0
    if fracture is not None:
        ext_u += abs(fracture.du)
        ext_v += abs(fracture.dv)
    u = np.arange(np.ceil(2 * ext_u), dtype=np.float32)[None, :] + np.float32(0.5 - ext_u)
    v = np.arange(np.ceil(2 * ext_v), dtype=np.float32)[:, None] + np.float32(0.5 - ext_v)
    canvas = Image.fromarray(np.ascontiguousarray(_bone_density(u, v, bone, fracture)))

    cos_a, sin_a = math.cos(bone.angle), math.sin(bone.angle)
    half_x = abs(cos_a) * ext_u + abs(sin_a) * ext_v
    half_y = abs(sin_a) * ext_u + abs(cos_a) * ext_v
    x0 = max(int(bone.centre_x - half_x), 0)
    x1 = min(int(np.ceil(bone.centre_x + half_x)) + 1, width)
    y0 = max(int(bone.centre_y - half_y), 0)
    y1 = min(int(np.ceil(bone.centre_y + half_y)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    # Output pixel (x, y) of the box has its centre at image coordinate (x0 + x, y0 + y);
    # Pillow samples at pixel centres (+0.5) on both sides.
    ox, oy = x0 - 0.5 - bone.centre_x, y0 - 0.5 - bone.centre_y
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


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Unit-ish, spatially smooth noise: coarse Gaussian noise upsampled bicubically."""
    coarse = rng.standard_normal((max(height // cell, 2), max(width // cell, 2)), dtype=np.float32)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
