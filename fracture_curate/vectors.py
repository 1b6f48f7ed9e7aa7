"""Embedding vectors: the matrix of a set of images, normalised rows, and similarity search that
never builds an N x N matrix (used by dedupe, geometry, outliers and the report)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
    return UnitRows.centred(vectors).dense()


@dataclass(frozen=True)
class UnitRows:
    """The L2-normalised rows of ``vectors`` (less ``mean``, when given), made a block at a time,
    in float32: a search over a million embeddings holds them once, in their own dtype (float16
    halves that), never a second N x D copy."""

    vectors: np.ndarray  #: N x D, any float dtype
    mean: np.ndarray | None = None  #: D, subtracted before normalising

    @classmethod
    def centred(cls, vectors: np.ndarray) -> UnitRows:
        """Rows less their mean (see :func:`centred_unit_rows`)."""
        return cls(vectors, vectors.mean(axis=0, dtype=np.float64).astype(np.float32))

    def __len__(self) -> int:
        return len(self.vectors)

    def take(self, rows: slice | np.ndarray) -> np.ndarray:
        """The unit rows ``rows`` (a slice or indices), float32."""
        block = self.vectors[rows].astype(np.float32)
        if self.mean is not None:
            block -= self.mean
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        return block

    def dense(self) -> np.ndarray:
        """Every unit row at once, N x D float32 (for sets small enough to hold twice)."""
        return self.take(slice(None))

    def cosines(self, left: np.ndarray, right: np.ndarray, chunk: int = 1 << 13) -> np.ndarray:
        """The exact cosine of each pair of rows ``(left[p], right[p])``, ``chunk`` pairs at a
        time (two 8,192 x 1,280 float32 blocks: 84 MB)."""
        out = np.empty(len(left), dtype=np.float32)
        for start in range(0, len(left), chunk):
            end = start + chunk
            out[start:end] = np.einsum(
                "ij,ij->i", self.take(left[start:end]), self.take(right[start:end])
            )
        return out


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
