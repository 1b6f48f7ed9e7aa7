"""Geometric verification: turned and cropped copies verify, look-alikes do not."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import save_gray, scanned
from PIL import Image

from fracture_curate.geometry import GEOMETRY_THRESHOLD, verify_pairs
from fracture_curate.images import to_rgb8
from fracture_curate.synthetic import draw_phantom
from fracture_curate.vectors import nearest_neighbours


def turned(image: Image.Image, angle: float) -> Image.Image:
    """Rotated by ``angle`` degrees on an expanded canvas filled with the border's median."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return image.rotate(
        angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=int(np.median(border))
    )


def cropped(image: Image.Image, fraction: float, left: float = 0.5, top: float = 0.5):
    """``fraction`` of the width and height cut off, ``left``/``top`` of it from those sides."""
    dw, dh = round(image.width * fraction), round(image.height * fraction)
    x, y = round(dw * left), round(dh * top)
    return image.crop((x, y, image.width - (dw - x), image.height - (dh - y)))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """A phantom, its turned and cropped copies (JPEG and PNG), and four other phantoms."""
    folder = tmp_path_factory.mktemp("phantoms")
    rng = np.random.default_rng(7)
    source = draw_phantom(rng, 256, True)
    images = {
        "source.png": source,
        "turned.jpg": turned(source, 7.0),
        "cropped.png": cropped(source, 0.08, left=0.25, top=0.75),
        "turned_cropped.jpg": cropped(turned(source, -4.0), 0.05),
    }
    images |= {f"other{k}.png": draw_phantom(rng, 256, k % 2 == 0) for k in range(4)}
    files = []
    for name, image in images.items():
        image.save(folder / name, **({"quality": 85} if name.endswith(".jpg") else {}))
        files.append(scanned(folder / name))
    return files


def test_turned_and_cropped_phantoms_verify_and_other_phantoms_do_not(phantoms):
    n = len(phantoms)
    left, right = np.triu_indices(n, 1)
    scores = verify_pairs(phantoms, left, right, workers=2)
    copies = (left < 4) & (right < 4)
    assert (scores[copies] >= GEOMETRY_THRESHOLD).all(), scores[copies]
    assert (scores[~copies] < GEOMETRY_THRESHOLD).all(), scores[~copies]


def test_streaming_order_does_not_change_scores(phantoms):
    left, right = np.array([0, 0, 5, 2, 6, 0]), np.array([1, 2, 6, 3, 7, 7])
    whole = verify_pairs(phantoms, left, right, workers=1)
    assert np.array_equal(verify_pairs(phantoms, left, right, workers=2, chunk=1), whole)


def test_unreadable_or_blank_images_score_zero(tmp_path, phantoms):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    blank = save_gray(tmp_path / "blank.png", np.full((64, 64), 90, dtype=np.uint8))
    files = [phantoms[0], scanned(tmp_path / "broken.png"), scanned(blank)]
    assert verify_pairs(files, np.array([0, 0]), np.array([1, 2])).tolist() == [0.0, 0.0]
    assert verify_pairs(files, np.array([], dtype=int), np.array([], dtype=int)).shape == (0,)


def test_real_radiograph_and_its_turned_copy_verify(tmp_path, ankle_radiograph):
    source = save_gray(tmp_path / "ankle16.png", ankle_radiograph)  # 16-bit, 1760 x 1760
    eight_bit = Image.fromarray(to_rgb8(ankle_radiograph)[:, :, 0])
    turned(eight_bit, 6.0).save(tmp_path / "turned.png")
    cropped(eight_bit.resize((880, 880), Image.Resampling.LANCZOS), 0.06).save(
        tmp_path / "small_cropped.jpg", quality=80
    )
    eight_bit.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirrored.png")
    names = ["turned.png", "small_cropped.jpg", "mirrored.png"]
    files = [scanned(source), *(scanned(tmp_path / name) for name in names)]
    scores = verify_pairs(files, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert (scores[:2] >= GEOMETRY_THRESHOLD).all(), scores
    assert scores[2] < GEOMETRY_THRESHOLD  # a mirror image is not a similarity transform


def brute_force_candidates(unit, k, floor):
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    pairs = set()
    for i, row in enumerate(similarity):
        for j in np.argsort(-row, kind="stable")[: min(k, len(unit) - 1)]:
            if row[j] >= floor:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


@pytest.mark.parametrize(
    ("n", "k", "floor", "block"),
    [(300, 5, -1.0, 64), (120, 3, 0.2, 7), (5, 10, -1.0, 2), (1, 3, 0, 4)],
)
def test_candidates_equal_brute_force_top_k(n, k, floor, block):
    rng = np.random.default_rng(n)
    unit = rng.standard_normal((n, 12)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    i, j, cosine = nearest_neighbours(unit, k, floor, block)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == brute_force_candidates(unit, k, floor)
    np.testing.assert_allclose(cosine, np.einsum("ij,ij->i", unit[i], unit[j]), atol=1e-5)
