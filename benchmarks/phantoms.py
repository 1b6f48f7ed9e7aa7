"""Cached folders of ~1 MP radiograph-like phantoms for the benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from fracture_curate.synthetic import draw_phantom

OUT = Path(__file__).parent / "out"


def make_images(name: str, count: int, size: int = 1024, png_fraction: float = 0.0) -> Path:
    """``OUT/name/<class>/imgNNNNN.{jpg,png}``, written once and reused while the settings hold."""
    folder = OUT / name
    marker = folder / f".complete-{count}-{size}-{png_fraction}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a set of another size or an unfinished one
    rng = np.random.default_rng(0)
    for index in range(count):
        fractured = bool(index % 2)
        image = draw_phantom(rng, size, fractured)
        is_png = rng.random() < png_fraction
        label = "fractured" if fractured else "not fractured"
        path = folder / label / f"img{index:05d}.{'png' if is_png else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **({} if is_png else {"quality": 92}))
    marker.touch()
    return folder
