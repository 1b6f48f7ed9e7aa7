"""Similar pairs among many embeddings: exact tiled search while it is cheap, an inverted-file
index (FAISS) beyond, with what the approximation cost measured on a sample of queries.

Exact all-pairs search grows as n^2 (79 s at 10^5 vectors on two cores, hours at 10^6). The
inverted file clusters the vectors with k-means into about 4 sqrt(n) lists, stores them as 8-bit
codes (a quarter of the memory and of the bytes scanned) and compares each vector only with the
lists nearest to it (``probes`` of them). Its candidates, taken a margin below the threshold,
are re-ranked with exact float32 cosines: it can only miss pairs, never invent one. Which pairs
it missed is measured against exact search for a sample of query rows, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fracture_curate.vectors import cosine_pairs, tile_rows

#: ``--search`` values: "auto" is exact up to :data:`EXACT_LIMIT` vectors, approximate beyond.
SEARCH_METHODS = ("auto", "exact", "approximate")
#: Above this many vectors "auto" searches approximately (exact: 1 s at 10^4, 7 s at 3 x 10^4).
EXACT_LIMIT = 30_000
#: Lists of the inverted file per square root of the number of vectors.
LISTS_PER_ROOT = 4
#: Training points per list for k-means (a sample: training on every vector costs as much as the
#: search), and its iterations.
TRAIN_PER_LIST = 16
KMEANS_ITERATIONS = 10
#: Query rows per range search call (bounds the results held at once).
QUERY_CHUNK = 20_000
#: How far below the threshold the 8-bit codes' similarities are taken as candidates: 16x their
#: largest rounding error measured on centred MobileNetV2 embeddings (0.0012, of the demo set's
#: images and of 4,700 near copies of them), so no pair above the threshold is lost to it.
CODE_MARGIN = 0.02
#: Query rows whose neighbours are also found exactly, to measure the approximation's recall.
RECALL_QUERIES = 1_000


@dataclass(frozen=True)
class SearchReport:
    """How the pairs were found, and, for an approximate search, what it missed."""

    method: str  #: "exact", or "approximate (IVF: L lists, P probed)"
    recall: float | None = None  #: of exact search's pairs, on the sampled queries
    queries: int = 0  #: query rows sampled to measure it
    exact_pairs: int = 0  #: pairs exact search finds for them

    def line(self) -> str:
        """The report in one line, for the command line."""
        if self.recall is None:
            return f"similarity search: {self.method}"
        return (
            f"similarity search: {self.method}; it found {self.recall:.3f} of the "
            f"{self.exact_pairs:,} pairs exact search finds for {self.queries:,} sampled rows"
        )


def similar_pairs(
    unit: np.ndarray,
    threshold: float,
    *,
    search: str = "auto",
    probes: int = 8,
    block: int = 2048,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, SearchReport]:
    """Every pair ``i < j`` of unit rows with cosine >= ``threshold``: ``(i, j, cosine, how)``.

    ``search`` is "exact" (tiled, :func:`~fracture_curate.vectors.cosine_pairs`),
    "approximate" (an inverted file probed ``probes`` lists deep) or "auto" (exact up to
    :data:`EXACT_LIMIT` rows).
    """
    if search not in SEARCH_METHODS:
        raise ValueError(f"unknown search {search!r}; choose one of {', '.join(SEARCH_METHODS)}")
    exact = search == "exact" or (search == "auto" and len(unit) <= EXACT_LIMIT)
    if exact:
        found = list(cosine_pairs(unit, threshold, block=block))
        i, j, cosine = (
            (np.concatenate([part[k] for part in found]) for k in range(3))
            if found
            else (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
        )
        return i, j, cosine, SearchReport("exact")
    i, j, cosine, lists = _inverted_file_pairs(unit, threshold, probes, seed)
    report = _recall(unit, threshold, i, j, seed)
    method = f"approximate (IVF: {lists:,} lists, {min(probes, lists)} probed)"
    return i, j, cosine, SearchReport(method, report[0], report[1], report[2])


def _inverted_file_pairs(
    unit: np.ndarray, threshold: float, probes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The pairs an inverted-file range search finds, re-ranked exactly, each once with
    ``i < j``; and its number of lists."""
    import faiss  # loaded only for sets this large

    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n, dim = unit.shape
    lists = max(1, min(int(LISTS_PER_ROOT * np.sqrt(n)), n // 8))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        lists,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n, TRAIN_PER_LIST * lists), replace=False)
    index.train(unit[np.sort(sample)])
    index.add(unit)
    index.nprobe = min(probes, lists)
    lefts, rights = [], []
    for start in range(0, n, QUERY_CHUNK):
        limits, _, neighbours = index.range_search(
            unit[start : start + QUERY_CHUNK], threshold - CODE_MARGIN
        )
        rows = start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64))
        other = rows != neighbours
        lefts.append(np.minimum(rows, neighbours)[other])
        rights.append(np.maximum(rows, neighbours)[other])
    i, j = np.concatenate(lefts), np.concatenate(rights)
    _, first = np.unique(i * n + j, return_index=True)  # found from both ends: keep one
    i, j = i[first], j[first]
    cosine = np.einsum("ij,ij->i", unit[i], unit[j])  # exact re-ranking of the candidates
    keep = cosine >= threshold
    return i[keep], j[keep], cosine[keep], lists


def _recall(
    unit: np.ndarray, threshold: float, i: np.ndarray, j: np.ndarray, seed: int
) -> tuple[float, int, int]:
    """Of the pairs exact search finds for a sample of query rows, the share in ``(i, j)``;
    with the sample's size and that count of pairs (a recall of 1 when there are none)."""
    n = len(unit)
    rng = np.random.default_rng(seed + 1)
    queries = np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    exact: set[tuple[int, int]] = set()
    step = tile_rows(n, len(queries))
    for start in range(0, len(queries), step):
        rows = queries[start : start + step]
        near, columns = np.nonzero(unit[rows] @ unit.T >= threshold)
        near = rows[near]
        other = near != columns
        pairs = zip(
            np.minimum(near, columns)[other].tolist(),
            np.maximum(near, columns)[other].tolist(),
            strict=True,
        )
        exact.update(pairs)
    sampled = np.isin(i, queries) | np.isin(j, queries)
    found = set(zip(i[sampled].tolist(), j[sampled].tolist(), strict=True))
    recall = len(exact & found) / len(exact) if exact else 1.0
    return recall, len(queries), len(exact)
