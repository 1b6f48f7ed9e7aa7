"""Embedding vectors: the matrix of a set of images, normalised rows, and similarity search that
never builds an N x N matrix (used by dedupe, geometry, outliers and the report)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

#: The most similarities a tile of a row-against-all search holds (64 MiB of float32): at a
#: million images a tile is 16 rows, not the 4 GiB that 1024 rows would take.
TILE_ELEMENTS = 1 << 24


def tile_rows(n: int, block: int) -> int:
    """Rows per tile of a search of each of ``n`` rows against all: ``block``, fewer when the
    tile would hold more than :data:`TILE_ELEMENTS` similarities, at least one."""
    return max(1, min(block, TILE_ELEMENTS // max(n, 1)))


def embedding_matrix(embeddings: pd.DataFrame, image_ids: Sequence[str]) -> np.ndarray:
    """The rows of an ``embeddings.parquet`` table for ``image_ids``, in that order: N x D."""
    vectors = embeddings.set_index("image_id").loc[list(image_ids), "embedding"]
    return np.stack(vectors.to_list())


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row L2-normalised (a new array; all-zero rows stay zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def centred_unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Subtract the mean and L2-normalise each row (float32, a new array).

    MobileNetV2's pooled features are non-negative, so the raw cosine of two unrelated X-rays is
    high; centred, their cosine spreads out and copies stand apart.
    """
    mean = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    return unit_rows(vectors.astype(np.float32) - mean)


def cosine_pairs(
    unit: np.ndarray, threshold: float, *, block: int = 2048
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All pairs ``i < j`` of unit rows with cosine >= ``threshold``, never an N x N matrix.

    The upper triangle of the product is computed in ``block x block`` tiles (16 MiB at the
    default), keeping just the pairs above the threshold: exact, and cache-friendly.
    """
    n = len(unit)
    for row in range(0, n, block):
        rows = unit[row : row + block]
        for column in range(row, n, block):
            similarity = rows @ unit[column : column + block].T
            i, j = np.nonzero(similarity >= threshold)
            if column == row:
                upper = j > i
                i, j = i[upper], j[upper]
            if len(i):
                yield i + row, j + column, similarity[i, j]


def nearest_neighbours(
    unit: np.ndarray, k: int, floor: float, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows with cosine >= ``floor``, as pairs.

    ``unit`` holds L2-normalised rows. Returns ``(i, j, cosine)`` with ``i < j``, each pair once,
    sorted by ``(i, j)``. Rows that tie with a row's k-th best are kept too. The search runs in
    tiles of at most ``block`` rows and :data:`TILE_ELEMENTS` similarities, never N x N.
    """
    n = len(unit)
    k = min(k, n - 1)
    lefts, rights, cosines = [], [], []
    block = tile_rows(n, block)
    for start in range(0, n if k > 0 else 0, block):
        similarity = unit[start : start + block] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # not its own neighbour
        kth = np.partition(similarity, n - k, axis=1)[:, n - k]
        i, j = np.nonzero(similarity >= np.maximum(kth, floor)[:, None])
        lefts.append(i + start)
        rights.append(j)
        cosines.append(similarity[i, j])
    if not lefts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, unit.dtype)
    i, j, cosine = np.concatenate(lefts), np.concatenate(rights), np.concatenate(cosines)
    low, high = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(low * n + high, return_index=True)
    return low[first], high[first], cosine[first]


def nearest_similarities(unit: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Each row's ``k`` highest cosines with the other rows (``k`` at most N - 1), N x k,
    unordered within a row.

    ``unit`` holds L2-normalised rows. The search runs in tiles of at most ``block`` rows and
    :data:`TILE_ELEMENTS` similarities, never N x N.
    """
    n = len(unit)
    k = min(k, n - 1)
    rows_per_tile = tile_rows(n, block)
    nearest = np.empty((n, max(k, 0)), dtype=np.float32)
    for start in range(0, n if k > 0 else 0, rows_per_tile):
        similarity = unit[start : start + rows_per_tile] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # not its own neighbour
        nearest[start : start + rows_per_tile] = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    return nearest
