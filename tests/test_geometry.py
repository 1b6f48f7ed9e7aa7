"""Geometric verification: turned and cropped copies verify, other films of one anatomy are
related, look-alikes are neither."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import save_gray, scanned
from PIL import Image

from fracture_curate import geometry
from fracture_curate.geometry import RELATED_INLIERS, verify_pairs
from fracture_curate.images import to_rgb8
from fracture_curate.phash import ORIENTATIONS
from fracture_curate.synthetic import draw_phantom
from fracture_curate.synthetic.planting import follow_up_film
from fracture_curate.vectors import nearest_neighbours, tile_rows


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
    evidence = verify_pairs(phantoms, left, right, workers=2)
    copies = (left < 4) & (right < 4)
    assert evidence.copies()[copies].all(), evidence.inliers[copies]
    assert not evidence.copies()[~copies].any(), evidence.inliers[~copies]
    assert not evidence.related()[~copies].any(), evidence.inliers[~copies]


def test_streaming_order_does_not_change_scores(phantoms):
    left, right = np.array([0, 0, 5, 2, 6, 0]), np.array([1, 2, 6, 3, 7, 7])
    whole = verify_pairs(phantoms, left, right, workers=1)
    streamed = verify_pairs(phantoms, left, right, workers=2, chunk=1)
    assert np.array_equal(streamed.inliers, whole.inliers)
    assert np.array_equal(streamed.matches, whole.matches)


def test_a_pair_listed_twice_is_tested_once(phantoms, monkeypatch):
    """A neighbour pair that is also a pHash pair in the same orientation: one test, the same
    evidence in both places; the same files in another orientation are another pair."""
    calls = []
    original = geometry.pair_evidence

    def counted(a, b):
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(geometry, "pair_evidence", counted)
    left, right = np.array([0, 0, 0, 4]), np.array([1, 1, 1, 5])
    evidence = verify_pairs(phantoms, left, right, orientation=np.array([0, 0, 5, 0]), screen=False)
    assert len(calls) == 3
    assert evidence.inliers[0] == evidence.inliers[1] and evidence.copies()[:2].all()
    assert not evidence.copies()[2] and not evidence.copies()[3]  # mirrored; other phantoms


def lowe_matches(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    """Lowe's ratio test and one-to-one matching, written out a descriptor at a time."""
    squared = ((a[:, None, :].astype(np.int64) - b[None, :, :]) ** 2).sum(axis=2)
    chosen: dict[int, tuple[int, int]] = {}  # row of b -> (distance, row of a)
    for row, distances in enumerate(squared if len(b) else []):
        nearest = int(np.argmin(distances))
        second = np.delete(distances, nearest).min(initial=np.iinfo(np.int64).max)
        if distances[nearest] < geometry.RATIO**2 * second:
            chosen[nearest] = min(chosen.get(nearest, (np.inf, -1)), (distances[nearest], row))
    return {(row, nearest) for nearest, (_, row) in chosen.items()}


def test_ratio_matches_are_lowes_test_one_to_one():
    """The matrix form of the ratio test equals it written out, ties (which fail it), images
    with one descriptor or none and repeated descriptors included."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 3, (int(rng.integers(0, 25)), 6)).astype(np.uint8)
        b = rng.integers(0, 3, (int(rng.integers(0, 10)), 6)).astype(np.uint8)
        if rng.random() < 0.3:
            b = np.concatenate([b, a[: len(a) // 2]])
        rows, nearest = geometry.ratio_matches(a, b)
        assert set(zip(rows.tolist(), nearest.tolist(), strict=True)) == lowe_matches(a, b)


def test_unreadable_or_blank_images_score_zero(tmp_path, phantoms):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    blank = save_gray(tmp_path / "blank.png", np.full((64, 64), 90, dtype=np.uint8))
    files = [phantoms[0], scanned(tmp_path / "broken.png"), scanned(blank)]
    evidence = verify_pairs(files, np.array([0, 0]), np.array([1, 2]))
    assert evidence.inliers.tolist() == [0, 0] and evidence.matches.tolist() == [0, 0]
    assert verify_pairs(files, np.array([], dtype=int), np.array([], dtype=int)).inliers.shape == (
        0,
    )


def test_mirrored_and_quarter_turned_copies_verify_in_the_orientation_given(tmp_path, phantoms):
    """A copy mirrored or turned 90 degrees has no similarity transform onto its source, but
    turned back (``orientation``, pHash's index) it is a copy; another phantom in any
    orientation is none, and the test could judge it."""
    source = Image.open(phantoms[0].root / phantoms[0].path)
    # name: (the orientation the copy was made in, the one that turns it back)
    turns = {"mirrored.png": (5, 5), "turned90.png": (1, 3), "transverse.png": (7, 7)}
    for name, (made, _) in turns.items():
        source.transpose(ORIENTATIONS[made]).save(tmp_path / name)
    files = [phantoms[0], *(scanned(tmp_path / name) for name in turns), phantoms[4]]
    left, right = np.zeros(4, dtype=int), np.array([1, 2, 3, 4])
    as_they_are = verify_pairs(files, left, right)
    assert not as_they_are.copies()[:3].any(), as_they_are
    back = np.array([back for _, back in turns.values()] + [5])
    turned_back = verify_pairs(files, left, right, orientation=back)
    assert turned_back.copies().tolist() == [True, True, True, False], turned_back
    assert turned_back.judged().all()


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
    evidence = verify_pairs(files, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert evidence.copies()[:2].all(), evidence
    assert not evidence.copies()[2] and not evidence.related()[2]  # a mirror: no transform


def test_other_films_of_a_real_chest_are_related_and_their_copies_still_copies(
    tmp_path, chest_radiograph
):
    """Stand-ins for follow-up films (another projection, exposure, soft tissue and grain of
    the same anatomy) share the anatomy's landmarks but not the acquisition: related, not
    copies; a cropped or turned copy of one of them is still a copy."""
    eight_bit = to_rgb8(chest_radiograph)[:, :, 0]
    rng = np.random.default_rng(11)
    Image.fromarray(eight_bit).save(tmp_path / "first.png")
    films = [follow_up_film(rng, eight_bit)[0] for _ in range(2)]
    for index, film in enumerate(films):
        Image.fromarray(film).save(tmp_path / f"film{index}.png")
    second = Image.fromarray(films[0])
    cropped(turned(second, 5.0), 0.08).save(tmp_path / "film0_copy.jpg", quality=85)
    names = ["first.png", "film0.png", "film1.png", "film0_copy.jpg"]
    files = [scanned(tmp_path / name) for name in names]
    evidence = verify_pairs(files, np.array([0, 0, 1, 1]), np.array([1, 2, 2, 3]))
    assert evidence.related()[:3].all() and not evidence.copies()[:3].any(), evidence
    assert evidence.copies()[3], evidence
    assert (evidence.inliers[:3] >= RELATED_INLIERS).all()


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


def test_candidates_in_tiles_bounded_by_memory_equal_brute_force(monkeypatch):
    """On a wide set the tile shrinks below ``block`` rows (here to 2) and finds the same."""
    unit = np.random.default_rng(3).standard_normal((150, 12)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    monkeypatch.setattr("fracture_curate.vectors.TILE_ELEMENTS", 300)
    assert tile_rows(150, 1024) == 2
    i, j, _ = nearest_neighbours(unit, 4, -1.0)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == brute_force_candidates(unit, 4, -1.0)


def test_the_screen_keeps_every_verdict_and_spares_the_full_test_for_strangers(
    phantoms, monkeypatch
):
    """Screened, every pair gets the verdict of the full test on every pair; the pairs of
    different phantoms stop at the screen, so their images are never read at full size."""
    n = len(phantoms)
    left, right = np.triu_indices(n, 1)
    full = verify_pairs(phantoms, left, right, screen=False, workers=2)
    sides = []  # (path, screen) of each file's features
    original = geometry.file_features

    def recorded(file, screen, orientation):
        sides.append((file.path, screen))
        return original(file, screen, orientation)

    monkeypatch.setattr(geometry, "file_features", recorded)
    screened = verify_pairs(phantoms, left, right, workers=2)
    assert np.array_equal(screened.copies(), full.copies())
    assert np.array_equal(screened.related(), full.related())
    passed = screened.matches > 0
    strangers = (left >= 4) | (right >= 4)
    assert not passed[strangers].any() and (full.matches[strangers] > 0).all()
    np.testing.assert_array_equal(screened.inliers[passed], full.inliers[passed])
    assert {path for path, screen in sides if not screen} == {phantoms[k].path for k in range(4)}
    assert {path for path, screen in sides if screen} == {file.path for file in phantoms}
