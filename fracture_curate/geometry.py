"""Geometric verification: is one image a rotated, scaled, shifted or cropped copy of another?

Embedding cosine alone cannot tell a slightly rotated or cropped copy from a different radiograph
that merely looks alike. This layer checks candidate pairs the way a person would: it finds the
same local details in both pictures and asks whether one similarity transform (rotation, uniform
scale, translation; a crop is a translation plus a smaller canvas) carries many of them onto each
other.

Each image is loaded once, brought to grayscale with a fixed long side and described by its
strongest SIFT keypoints (OpenCV), found with a very low contrast floor so that even smooth, dim
radiographs yield their full quota: the fine texture (grain, noise, trabecular pattern) is exactly
what a copy shares with its source and a different picture does not. A pair's descriptors are
matched with Lowe's ratio test, kept one-to-one, and a similarity transform is fitted with RANSAC.
The evidence for a pair is the number of distinct keypoints that the transform carries onto
their match (0 when the transform is implausible: a degenerate fit, a large zoom or rotation) and
the number of ratio-test matches it was fitted to.

Two kinds of pair pass. A copy (the same acquisition, re-encoded, resized, turned or cropped)
shares its source's grain, so one transform explains most of the matches. Another film of the
same anatomy (a follow-up, a second exposure) shares only the anatomy: the anatomy's landmarks
match, but the new projection, the soft tissue and the new grain leave most matches off any
single transform. Different images that merely look alike match in single digits.

A pair may be tested with its second image turned or mirrored first (one of pHash's 8
orientations): a pHash or embedding match is a copy only when the test, on the picture turned
back as the pair's hashes match, finds one.

Most candidate pairs are different images, so every pair is first screened coarse-to-fine: the
same test on small working images (:data:`SCREEN_SIDE` pixels, :data:`SCREEN_KEYPOINTS`
keypoints, decoded at reduced size), about a fifth of the cost per image and a third per pair.
Only the pairs whose screen puts :data:`SCREEN_INLIERS` keypoints on one transform are verified
at full size, and only their images are decoded again. The screen only decides which pairs are
worth the full test, never what a pair is, so it can cost recall but not precision; its bar is
set far below what copies and other films of one anatomy reach (benchmarks/related_films.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee
from threadpoolctl import threadpool_limits

from fracture_curate.dataset_files import ScannedFile
from fracture_curate.images import ImageLoadError, to_rgb8
from fracture_curate.phash import ORIENTATIONS, orient
from fracture_curate.progress import Phase, ProgressCallback

WORK_SIDE = 384  #: long side, in pixels, of the grayscale image that keypoints are found in
MAX_KEYPOINTS = 500  #: strongest SIFT keypoints kept per image
CONTRAST_THRESHOLD = 0.001  #: SIFT contrast floor: low, so even smooth images fill MAX_KEYPOINTS
RATIO = 0.8  #: Lowe's ratio test: best match distance < RATIO x second best
RANSAC_PIXELS = 2.0  #: reprojection error (working pixels) for a match to count as an inlier
MAX_ROTATION_DEGREES = 20.0  #: larger turns are not "small"; flips and 90s are pHash's job
#: Plausible zoom between two pictures, each measured in units of its own long side (so a resized
#: copy has zoom 1, a crop zooms in, a turn with an expanded canvas zooms out).
SCALE_RANGE = (0.67, 1.5)
#: A copy: at least COPY_INLIERS keypoints on one transform, and at least COPY_SHARE of the
#: ratio-test matches. Measured by benchmarks/related_films.py over seeds 0-9 (benchmarks/
#: README.md): copies (crop, turn, half size, JPEG, brightness) of two real radiographs 25-426
#: inliers and 0.48-0.95 of the matches, of phantoms 12-402 and 0.43-0.95; stand-ins for other
#: films of one anatomy 0-96 inliers and at most 0.45 of the matches; random pairs of phantoms
#: at most 5 inliers. The share separates them on the worst seed but for 2 copies of 60.
COPY_INLIERS = 20
COPY_SHARE = 0.5
#: Related (another film of the same anatomy): at least RELATED_INLIERS keypoints on one
#: transform without the share of a copy: more than twice what different phantoms reach (and
#: 1.5 times the 8 of the closest neighbours among 15,110 candidate pairs of phantoms).
RELATED_INLIERS = 12
#: The screen sees each image at half the full test's working side (at least SCREEN_MIN_SIDE
#: pixels, never enlarged): a quarter of its pixels.
SCREEN_MIN_SIDE = 128
SCREEN_KEYPOINTS = 200  #: strongest keypoints the screen keeps per image
#: A pair goes on to full verification when its screen puts at least this many keypoints on one
#: plausible transform. Measured by benchmarks/related_films.py over seeds 0-9: every pair that
#: the full test calls a copy or related screens at 7 or more (copies of the real ankle
#: radiograph 13, at 128 px some screened at 0), random pairs of phantoms at most 5; among the
#: 17,797 candidates of the 1,801-file synth set, copies screen at 28 or more and 1% of the
#: others reach 4.
SCREEN_INLIERS = 4
#: An image with fewer keypoints than this at the screen's size holds too little detail there to
#: be judged (the real ankle radiograph at 256 px: 9 at 128 px, where its turned copy screens at
#: 3): its pairs go to the full test. Phantoms at 128 px hold 62 or more.
SCREEN_MIN_KEYPOINTS = 50


@dataclass(frozen=True)
class Features:
    """SIFT keypoints of one image at working size: positions and descriptors."""

    points: np.ndarray  #: K x 2 float32, (x, y) in working pixels
    descriptors: np.ndarray  #: K x 128 uint8 (OpenCV's SIFT values are whole numbers 0-255)
    side: int  #: long side of the working image

    @classmethod
    def empty(cls) -> Features:
        return cls(np.empty((0, 2), np.float32), np.empty((0, 128), np.uint8), 1)


def working_image(pixels: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """A canonical pixel array as uint8 grayscale, shrunk (never enlarged) to long side ``side``.

    Enlarging would only blur: a small copy keeps its own sharp detail, and the zoom between two
    pictures is judged relative to each one's long side (see :func:`pair_evidence`).
    """
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    scale = side / max(height, width)
    if scale < 1:
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        gray = cv2.resize(np.ascontiguousarray(gray), size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(to_rgb8(gray)[:, :, 0])


def image_features(
    pixels: np.ndarray, side: int = WORK_SIDE, keypoints: int = MAX_KEYPOINTS
) -> Features:
    """The ``keypoints`` strongest SIFT keypoints of a canonical pixel array (see
    :mod:`fracture_curate.images`) brought to long side ``side``."""
    sift = cv2.SIFT_create(nfeatures=keypoints, contrastThreshold=CONTRAST_THRESHOLD)
    image = working_image(pixels, side)
    keypoints, descriptors = sift.detectAndCompute(image, None)
    if descriptors is None:
        return Features.empty()
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return Features(points, descriptors.astype(np.uint8), max(image.shape))


def screen_features(pixels: np.ndarray) -> Features:
    """The screen's keypoints: :data:`SCREEN_KEYPOINTS` of them, at half the full test's working
    side (at least :data:`SCREEN_MIN_SIDE` pixels, never enlarged)."""
    long_side = max(pixels.shape[:2])
    side = max(min(long_side, WORK_SIDE) // 2, min(long_side, SCREEN_MIN_SIDE))
    return image_features(pixels, side, SCREEN_KEYPOINTS)


def file_features(file: ScannedFile, screen: bool = False, orientation: int = 0) -> Features:
    """SIFT keypoints of a scanned file, turned or mirrored as ``ORIENTATIONS[orientation]``,
    for the full test (or the ``screen``); none for a file that cannot be decoded or is no
    longer the one scanned."""
    try:
        loaded = file.load(draft_size=(WORK_SIDE, WORK_SIDE))
    except ImageLoadError:
        return Features.empty()
    pixels = orient(loaded.pixels, orientation)
    return screen_features(pixels) if screen else image_features(pixels)


def ratio_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches ``(rows of a, rows of b)`` of descriptors that pass the ratio test.

    SIFT's values are whole numbers 0-255 of a vector of norm about 512, so every squared
    distance, and every partial sum of one, is a whole number below 2^24: float32 holds them
    exactly, whatever the order of the sums.
    """
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    a, b = a.astype(np.float32), b.astype(np.float32)
    # Squared distances less |a_i|^2 (constant along a row, added back to the two nearest).
    partial = a @ (-2.0 * b).T
    partial += np.einsum("ij,ij->i", b, b)[None, :]
    rows = np.arange(len(a))
    nearest = partial.argmin(axis=1)
    first = partial[rows, nearest]
    partial[rows, nearest] = np.inf
    norms = np.einsum("ij,ij->i", a, a)
    first = np.maximum(first + norms, 0.0)  # a tie at 0 must fail the ratio test
    second = np.maximum(partial.min(axis=1) + norms, 0.0)
    passed = first < RATIO * RATIO * second
    rows, nearest, first = rows[passed], nearest[passed], first[passed]
    # Where several rows of a chose the same row of b, keep the closest.
    order = np.lexsort((first, nearest))
    unique = np.diff(nearest[order], prepend=-1) != 0
    return rows[order[unique]], nearest[order[unique]]


@dataclass(frozen=True)
class PairEvidence:
    """What geometric verification found for each of a list of pairs."""

    inliers: np.ndarray  #: distinct keypoints that one plausible similarity transform carries
    matches: np.ndarray  #: one-to-one descriptor matches that passed the ratio test
    #: the fewer keypoints of the pair's two images (at the screen's size for a pair the screen
    #: stopped)
    keypoints: np.ndarray

    def judged(self, min_keypoints: int = SCREEN_MIN_KEYPOINTS) -> np.ndarray:
        """Pairs whose two images held enough detail for the test to speak (``min_keypoints``
        keypoints each): where it finds no copy, there is none."""
        return self.keypoints >= min_keypoints

    def take(self, rows: np.ndarray | slice) -> PairEvidence:
        """The evidence of some of the pairs."""
        return PairEvidence(self.inliers[rows], self.matches[rows], self.keypoints[rows])

    @property
    def share(self) -> np.ndarray:
        """The share of the matches that the transform explains."""
        return self.inliers / np.maximum(self.matches, 1)

    def copies(self, min_inliers: int = COPY_INLIERS, min_share: float = COPY_SHARE) -> np.ndarray:
        """Pairs that are the same acquisition (a copy)."""
        return (self.inliers >= min_inliers) & (self.share >= min_share)

    def related(
        self,
        min_inliers: int = RELATED_INLIERS,
        copy_inliers: int = COPY_INLIERS,
        copy_share: float = COPY_SHARE,
    ) -> np.ndarray:
        """Pairs that show the same anatomy without being a copy (another film of it)."""
        return (self.inliers >= min_inliers) & ~self.copies(copy_inliers, copy_share)


def pair_evidence(a: Features, b: Features) -> tuple[int, int, int]:
    """``(inliers, matches, keypoints)``: the distinct keypoints of ``a`` that one plausible
    similarity transform puts on their match, the ratio-test matches it was fitted to, and the
    fewer keypoints of the two images."""
    keypoints = min(len(a.points), len(b.points))
    if keypoints < 2:
        return 0, 0, keypoints
    rows_a, rows_b = ratio_matches(a.descriptors, b.descriptors)
    if len(rows_a) < 3:
        return 0, len(rows_a), keypoints
    source, target = a.points[rows_a], b.points[rows_b]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS
    )
    if transform is None:
        return 0, len(rows_a), keypoints
    scale = math.hypot(transform[0, 0], transform[1, 0]) * a.side / b.side
    rotation = math.degrees(math.atan2(transform[1, 0], transform[0, 0]))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or abs(rotation) > MAX_ROTATION_DEGREES:
        return 0, len(rows_a), keypoints
    # Distinct keypoints, to the pixel: one key per rounded (x, y) (coordinates below 2^20).
    x, y = source[inliers.ravel().astype(bool)].round().astype(np.int64).T
    return len(np.unique((x << 20) | y)), len(rows_a), keypoints


def verify_pairs(
    files: Sequence[ScannedFile],
    left: np.ndarray,
    right: np.ndarray,
    *,
    orientation: np.ndarray | None = None,
    screen: bool = True,
    workers: int | None = None,
    chunk: int = 256,
    on_progress: ProgressCallback | None = None,
) -> PairEvidence:
    """The geometric evidence of each pair ``(files[left[p]], files[right[p]])``, the right one
    turned or mirrored as ``ORIENTATIONS[orientation[p]]`` (as it is, without ``orientation``).

    With ``screen`` (the default), pairs are first screened on small images and only those
    whose screen passes (:data:`SCREEN_INLIERS`) are verified at full size; the others get no
    evidence (0 inliers, 0 matches). A pair listed more than once is tested once. Progress is
    reported in the phases "screening pairs" and "verifying geometry".
    """
    # An image in one orientation is one item: file k as seen in orientation o is 8k + o.
    right = np.asarray(right, dtype=np.int64) * len(ORIENTATIONS)
    if orientation is not None:
        right = right + np.asarray(orientation, dtype=np.int64)
    listed = np.stack([np.asarray(left, dtype=np.int64) * len(ORIENTATIONS), right], axis=1)
    pairs, listing = np.unique(listed.reshape(-1, 2), axis=0, return_inverse=True)
    left, right = pairs[:, 0], pairs[:, 1]
    verified = np.ones(len(left), dtype=bool)
    evidence = np.zeros((len(left), 3), dtype=np.int64)
    if screen:
        phase = Phase(on_progress, "screening pairs", _count_images(left, right))
        screened = _score_pairs(files, left, right, True, screen_passes, 2, workers, chunk, phase)
        verified = screened[:, 0].astype(bool)
        evidence[~verified, 2] = screened[~verified, 1]
    phase = Phase(on_progress, "verifying geometry", _count_images(left[verified], right[verified]))
    evidence[verified] = _score_pairs(
        files, left[verified], right[verified], False, pair_evidence, 3, workers, chunk, phase
    )
    evidence = evidence[listing.ravel()]
    return PairEvidence(evidence[:, 0], evidence[:, 1], evidence[:, 2])


def screen_passes(a: Features, b: Features) -> tuple[int, int]:
    """``(passes, keypoints)``: ``passes`` is 1 when the screen sends a pair on to the full
    test: its small images put :data:`SCREEN_INLIERS` keypoints on one transform, or one of
    them holds too little detail at that size to judge (fewer than
    :data:`SCREEN_MIN_KEYPOINTS` keypoints); ``keypoints`` is the fewer of the two images'."""
    keypoints = min(len(a.points), len(b.points))
    if keypoints < SCREEN_MIN_KEYPOINTS:
        return 1, keypoints
    return int(pair_evidence(a, b)[0] >= SCREEN_INLIERS), keypoints


def _count_images(left: np.ndarray, right: np.ndarray) -> int:
    return len(np.unique(np.concatenate([left, right])))


def _score_pairs(
    files: Sequence[ScannedFile],
    left: np.ndarray,
    right: np.ndarray,
    screen: bool,
    score: Callable[[Features, Features], tuple[int, ...]],
    width: int,
    workers: int | None,
    chunk: int,
    phase: Phase,
) -> np.ndarray:
    """``score`` (``width`` numbers) of each pair's features (the full test's, or the
    ``screen``'s), P x ``width``; ``left`` and ``right`` are items (see :func:`verify_pairs`).

    Features are computed once per image in a pair, ``chunk`` images at a time, in an order that
    keeps the pair graph's images close together (reverse Cuthill-McKee); a pair is scored as soon
    as both of its images have features, and an image's features are dropped after its last
    pair, so memory follows the graph's locality rather than the number of images.
    """
    evidence = np.zeros((len(left), width), dtype=np.int64)
    if len(left) == 0:
        return evidence
    images, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    a, b = inverse[: len(left)], inverse[len(left) :]
    order, due, last = _schedule(len(images), a, b)
    pairs_by_due, images_by_last = np.argsort(due, kind="stable"), np.argsort(last, kind="stable")
    due_sorted, last_sorted = due[pairs_by_due], last[images_by_last]
    features: dict[int, Features] = {}

    def describe(k: int) -> Features:
        file, orientation = divmod(int(images[k]), len(ORIENTATIONS))
        return file_features(files[file], screen, orientation)

    def scored(pair: int) -> tuple[int, ...]:
        return score(features[int(a[pair])], features[int(b[pair])])

    workers = workers or os.cpu_count() or 1
    with _libraries_on_one_thread(), ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(order), chunk):
            batch = order[start : start + chunk]
            features.update(zip(batch.tolist(), pool.map(describe, batch), strict=True))
            low, high = np.searchsorted(due_sorted, [start, start + chunk])
            ready = pairs_by_due[low:high]
            if len(ready):
                evidence[ready] = np.array(list(pool.map(scored, ready)), dtype=np.int64)
            low, high = np.searchsorted(last_sorted, [start, start + chunk])
            for k in images_by_last[low:high].tolist():
                del features[k]
            phase.advance(len(batch))
    return evidence


@contextmanager
def _libraries_on_one_thread() -> Iterator[None]:
    """OpenCV (SIFT) and BLAS (the descriptors' products) on one thread each: the images and
    pairs are the parallel work, and threads of their own only contend for the same cores."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        cv2.setNumThreads(threads)


def _schedule(n: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image order (reverse Cuthill-McKee of the pair graph), each pair's step (when both of its
    images are ready) and each image's last step (when its features can go)."""
    graph = scipy.sparse.csr_matrix((np.ones(len(a), dtype=np.int32), (a, b)), shape=(n, n))
    order = reverse_cuthill_mckee((graph + graph.T).tocsr(), symmetric_mode=True)
    rank = np.empty_like(order)
    rank[order] = np.arange(n)
    due = np.maximum(rank[a], rank[b]).astype(np.int64)
    last = np.zeros(n, dtype=np.int64)
    np.maximum.at(last, a, due)
    np.maximum.at(last, b, due)
    return order, due, last
