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
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee

from fracture_curate.dataset_files import ScannedFile
from fracture_curate.images import ImageLoadError, to_rgb8
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


def image_features(pixels: np.ndarray) -> Features:
    """SIFT keypoints of a canonical pixel array (see :mod:`fracture_curate.images`)."""
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS, contrastThreshold=CONTRAST_THRESHOLD)
    image = working_image(pixels)
    keypoints, descriptors = sift.detectAndCompute(image, None)
    if descriptors is None:
        return Features.empty()
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return Features(points, descriptors.astype(np.uint8), max(image.shape))


def file_features(file: ScannedFile) -> Features:
    """SIFT keypoints of a scanned file; none for a file that cannot be decoded or is no longer
    the one scanned."""
    try:
        loaded = file.load(draft_size=(WORK_SIDE, WORK_SIDE))
    except ImageLoadError:
        return Features.empty()
    return image_features(loaded.pixels)


def ratio_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches ``(rows of a, rows of b)`` of descriptors that pass the ratio test."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    # Squared distances; cv2.gemm releases the GIL and starts no BLAS threads of its own.
    squared = cv2.gemm(a, b, -2.0, None, 0.0, flags=cv2.GEMM_2_T)
    squared += (a * a).sum(axis=1)[:, None]
    squared += (b * b).sum(axis=1)[None, :]
    np.maximum(squared, 0.0, out=squared)  # rounding; a tie at 0 must fail the ratio test
    rows = np.arange(len(a))
    nearest = squared.argmin(axis=1)
    first = squared[rows, nearest]
    squared[rows, nearest] = np.inf
    passed = first < RATIO * RATIO * squared.min(axis=1)
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


def pair_evidence(a: Features, b: Features) -> tuple[int, int]:
    """``(inliers, matches)``: the distinct keypoints of ``a`` that one plausible similarity
    transform puts on their match, and the ratio-test matches it was fitted to."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0, 0
    rows_a, rows_b = ratio_matches(a.descriptors, b.descriptors)
    if len(rows_a) < 3:
        return 0, len(rows_a)
    source, target = a.points[rows_a], b.points[rows_b]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS
    )
    if transform is None:
        return 0, len(rows_a)
    scale = math.hypot(transform[0, 0], transform[1, 0]) * a.side / b.side
    rotation = math.degrees(math.atan2(transform[1, 0], transform[0, 0]))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or abs(rotation) > MAX_ROTATION_DEGREES:
        return 0, len(rows_a)
    kept = source[inliers.ravel().astype(bool)]
    return len(np.unique(kept.round(), axis=0)), len(rows_a)


def verify_pairs(
    files: Sequence[ScannedFile],
    left: np.ndarray,
    right: np.ndarray,
    *,
    workers: int | None = None,
    chunk: int = 256,
    on_progress: ProgressCallback | None = None,
) -> PairEvidence:
    """The geometric evidence of each pair ``(files[left[p]], files[right[p]])``.

    Features are computed once per image in a pair, ``chunk`` images at a time, in an order that
    keeps the pair graph's images close together (reverse Cuthill-McKee); a pair is scored as soon
    as both of its images have features, and an image's features are dropped after its last
    pair, so memory follows the graph's locality rather than the number of images.
    Progress is reported as images are done, in a phase "verifying geometry".
    """
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    evidence = np.zeros((len(left), 2), dtype=np.int64)
    if len(left) == 0:
        return PairEvidence(evidence[:, 0], evidence[:, 1])
    images, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    a, b = inverse[: len(left)], inverse[len(left) :]
    order, due, last = _schedule(len(images), a, b)
    pairs_by_due, images_by_last = np.argsort(due, kind="stable"), np.argsort(last, kind="stable")
    due_sorted, last_sorted = due[pairs_by_due], last[images_by_last]

    features: dict[int, Features] = {}
    phase = Phase(on_progress, "verifying geometry", len(images))

    def score(pair: int) -> tuple[int, int]:
        return pair_evidence(features[int(a[pair])], features[int(b[pair])])

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(order), chunk):
            batch = order[start : start + chunk]
            loaded = pool.map(lambda k: file_features(files[int(images[k])]), batch)
            features.update(zip(batch.tolist(), loaded, strict=True))
            low, high = np.searchsorted(due_sorted, [start, start + chunk])
            ready = pairs_by_due[low:high]
            evidence[ready] = np.array(list(pool.map(score, ready)), dtype=np.int64).reshape(-1, 2)
            low, high = np.searchsorted(last_sorted, [start, start + chunk])
            for k in images_by_last[low:high].tolist():
                del features[k]
            phase.advance(len(batch))
    return PairEvidence(evidence[:, 0], evidence[:, 1])


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
