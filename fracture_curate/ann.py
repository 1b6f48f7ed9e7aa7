"""Similar pairs and nearest neighbours among many embeddings: exact tiled search while it is
cheap, an inverted-file index (FAISS) beyond, with what the approximation cost measured on a
sample of queries.

Exact all-pairs search grows as n^2 (79 s at 10^5 vectors on two cores, hours at 10^6). The
inverted file clusters the vectors with k-means into about 4 sqrt(n) lists, stores them as 8-bit
codes (a quarter of the memory and of the bytes scanned) and compares each vector only with the
lists nearest to it (``probes`` of them). Its candidates, taken a margin below the threshold,
are re-ranked with exact float32 cosines: it can only miss pairs, never invent one. Which pairs
(or neighbours) it missed is measured against exact search for a sample of query rows, and
reported. The rows are normalised a block at a time (:class:`~fracture_curate.vectors.UnitRows`),
so memory is the vectors once, in their own dtype, plus the codes: no N x N, no second N x D.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fracture_curate.vectors import UnitRows, cosine_pairs, nearest_neighbours, tile_rows

#: ``--search`` values: "auto" is exact up to :data:`EXACT_LIMIT` vectors, approximate beyond.
SEARCH_METHODS = ("auto", "exact", "approximate")
#: Above this many vectors "auto" searches approximately (exact: 1 s at 10^4, 7 s at 3 x 10^4).
EXACT_LIMIT = 30_000
#: Above this many vectors "auto" finds the geometry layer's neighbours approximately. Exact
#: nearest-neighbour search costs 234 s at 10^5 vectors; the inverted file, on the embeddings of
#: 82,003 generated radiographs that all look alike (plain cosines crowded near 0.9), found only
#: 0.770 of the exact neighbours with 8 probes, and with them 56% of the planted small rotations.
NEIGHBOUR_EXACT_LIMIT = 100_000
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
#: What :func:`neighbour_pairs` reports its search as.
NEIGHBOURS = "geometry neighbours"
#: Lists each row's pair search probes: at 10^6 structured embeddings 8 found every pair exact
#: search finds above 0.95 for 1,000 sampled rows (benchmarks/million.py).
PAIR_PROBES = 8
#: Lists each row's nearest-neighbour search probes. The neighbours' floor is far below the
#: pairs' threshold, and at 10^6 structured embeddings (about 13 lists to each of their 300
#: look-alike clusters) 8 probes found 0.9865 of the exact neighbours, 12 found 0.9983.
NEIGHBOUR_PROBES = 12
#: Query rows whose neighbours are also found exactly, to measure the approximation's recall.
RECALL_QUERIES = 1_000


@dataclass(frozen=True)
class SearchReport:
    """How the pairs were found, and, for an approximate search, what it missed."""

    method: str  #: "exact", or "approximate (IVF: L lists, P probed, C codes)"
    recall: float | None = None  #: of exact search's pairs (or neighbours), on the sampled queries
    queries: int = 0  #: query rows sampled to measure it
    exact_pairs: int = 0  #: pairs (or neighbours) exact search finds for them
    purpose: str = "similarity search"  #: what the search was for, in words
    unit: str = "pairs"  #: what recall counts: "pairs" or "neighbours"

    def line(self) -> str:
        """The report in one line, for the command line."""
        if self.recall is None:
            return f"{self.purpose}: {self.method}"
        return (
            f"{self.purpose}: {self.method}; it found {self.recall:.3f} of the "
            f"{self.exact_pairs:,} {self.unit} exact search finds for {self.queries:,} sampled rows"
        )


def similar_pairs(
    rows: UnitRows | np.ndarray,
    threshold: float,
    *,
    search: str = "auto",
    probes: int = PAIR_PROBES,
    block: int = 2048,
    seed: int = 0,
    partition: Partition | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, SearchReport]:
    """Every pair ``i < j`` of unit rows with cosine >= ``threshold``: ``(i, j, cosine, how)``.

    ``search`` is "exact" (tiled, :func:`~fracture_curate.vectors.cosine_pairs`),
    "approximate" (an inverted file probed ``probes`` lists deep) or "auto" (exact up to
    :data:`EXACT_LIMIT` rows). ``rows`` is a :class:`~fracture_curate.vectors.UnitRows` or an
    array of unit rows. An approximate search uses the lists and probes of ``partition`` (of
    these rows, or of others in the same order) when given, else partitions ``rows``.
    """
    rows = _unit_rows(rows)
    if _exact(search, len(rows)):
        found = list(cosine_pairs(rows.dense(), threshold, block=block))
        i, j, cosine = (
            (np.concatenate([part[k] for part in found]) for k in range(3))
            if found
            else (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
        )
        return i, j, cosine, SearchReport("exact")
    index = InvertedFile.build(rows, partition or Partition(rows, probes, seed), probes)
    lefts, rights = [], []
    for ids in index.partition.query_blocks():
        limits, _, neighbours = index.range_search(ids, rows.take(ids), threshold - CODE_MARGIN)
        found = ids[np.repeat(np.arange(len(ids)), np.diff(limits).astype(np.int64))]
        other = found != neighbours
        lefts.append(np.minimum(found, neighbours)[other])
        rights.append(np.maximum(found, neighbours)[other])
    method = index.method
    del index  # its codes: a quarter (or half) of the vectors' memory
    i, j = _each_pair_once(np.concatenate(lefts), np.concatenate(rights), len(rows))
    cosine = rows.cosines(i, j)  # exact re-ranking of the candidates
    keep = cosine >= threshold
    i, j, cosine = i[keep], j[keep], cosine[keep]
    recall, queries, exact = _range_recall(rows, threshold, i, j, seed)
    return i, j, cosine, SearchReport(method, recall, queries, exact)


def neighbour_pairs(
    rows: UnitRows | np.ndarray,
    k: int,
    floor: float,
    *,
    search: str = "auto",
    probes: int = NEIGHBOUR_PROBES,
    block: int = 1024,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    partition: Partition | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, SearchReport]:
    """Each row's ``k`` most similar other rows with cosine >= ``floor``, as pairs ``i < j``
    (each once): ``(i, j, cosine, how)``.

    Exact (:func:`~fracture_curate.vectors.nearest_neighbours`) or through an inverted file, as
    :func:`similar_pairs` chooses, but "auto" is exact up to :data:`NEIGHBOUR_EXACT_LIMIT`
    rows. An approximate search ranks by float16 codes (their cosines, within about 1e-3 of the
    exact ones, are those returned) and reports the share of exact search's neighbours it found
    for ``recall_queries`` sampled rows; it shares ``partition`` as :func:`similar_pairs` does.
    """
    rows = _unit_rows(rows)
    if _exact(search, len(rows), NEIGHBOUR_EXACT_LIMIT):
        found = nearest_neighbours(rows.dense(), k, floor, block)
        return (*found, SearchReport("exact", purpose=NEIGHBOURS))
    n, k = len(rows), min(k, len(rows) - 1)
    if k < 1:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32), SearchReport("exact", purpose=NEIGHBOURS)
    # Half-precision codes: 8-bit ones reorder near ties enough to miss 4% of the neighbours.
    partition = partition or Partition(rows, probes, seed)
    index = InvertedFile.build(rows, partition, probes, half_precision=True)
    neighbours = np.empty((n, k), dtype=np.int64)
    cosines = np.empty((n, k), dtype=np.float32)
    for ids in partition.query_blocks():
        scores, found = index.search(ids, rows.take(ids), k + 1)
        scores[(found == ids[:, None]) | (found < 0)] = -np.inf  # not its own neighbour
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        neighbours[ids] = np.take_along_axis(found, order, axis=1)
        cosines[ids] = np.take_along_axis(scores, order, axis=1)
    method = index.method
    del index  # its codes: a quarter (or half) of the vectors' memory
    left, right, cosine = np.repeat(np.arange(n), k), neighbours.ravel(), cosines.ravel()
    near = cosine >= floor
    recall, queries, exact = _neighbour_recall(
        rows, neighbours, near.reshape(n, k), k, floor, seed, recall_queries
    )
    low, high = np.minimum(left, right)[near], np.maximum(left, right)[near]
    _, first = np.unique(low * n + high, return_index=True)
    report = SearchReport(method, recall, queries, exact, NEIGHBOURS, "neighbours")
    return low[first], high[first], cosine[near][first], report


def _unit_rows(rows: UnitRows | np.ndarray) -> UnitRows:
    return rows if isinstance(rows, UnitRows) else UnitRows(np.asarray(rows))


def _exact(search: str, n: int, limit: int | None = None) -> bool:
    """Whether ``search`` over ``n`` rows is exact ("auto": up to ``limit``, else EXACT_LIMIT)."""
    if search not in SEARCH_METHODS:
        raise ValueError(f"unknown search {search!r}; choose one of {', '.join(SEARCH_METHODS)}")
    return search == "exact" or (search == "auto" and n <= (limit or EXACT_LIMIT))


def _blocks(rows: UnitRows, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, unit rows)`` a block of ``size`` rows at a time."""
    for start in range(0, len(rows), size):
        yield start, rows.take(slice(start, start + size))


class Partition:
    """k-means lists of unit rows and each row's ``probes`` nearest lists, found once, on first
    use, and shared by every inverted file built on it (each probing at most that many): dedupe's
    two searches share one partition of the plain embeddings (about 20 s of k-means and coarse
    search at 10^6 rows, 23 s at 3 x 10^5)."""

    def __init__(self, rows: UnitRows, probes: int, seed: int = 0) -> None:
        self.rows, self.seed = rows, seed
        self.lists = max(1, min(int(LISTS_PER_ROOT * np.sqrt(len(rows))), len(rows) // 8))
        self.probes = min(probes, self.lists)

    @cached_property
    def quantizer(self) -> Any:
        """The list centres (faiss.IndexFlatIP), k-means on a sample of TRAIN_PER_LIST rows a
        list."""
        import faiss  # loaded only for sets this large

        n, dim = self.rows.vectors.shape
        rng = np.random.default_rng(self.seed)
        sample = rng.choice(n, size=min(n, TRAIN_PER_LIST * self.lists), replace=False)
        clustering = faiss.Clustering(dim, self.lists)
        clustering.niter = KMEANS_ITERATIONS
        clustering.seed = self.seed
        clustering.min_points_per_centroid = 1
        clustering.spherical = True  # centres of unit rows, compared by inner product
        quantizer = faiss.IndexFlatIP(dim)
        clustering.train(self.rows.take(np.sort(sample)), quantizer)
        return quantizer

    @cached_property
    def probed(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``probes`` nearest lists, nearest first: their similarities (N x probes,
        float32) and ids (N x probes)."""
        found = [
            self.quantizer.search(block, self.probes)
            for _, block in _blocks(self.rows, QUERY_CHUNK)
        ]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    def query_blocks(self) -> Iterator[np.ndarray]:
        """The rows, QUERY_CHUNK at a time, in the order of their nearest list. Scanning the
        codes is bound by reading them from memory: queries in this order probe the same lists
        one after another, which stay in the cache."""
        order = np.argsort(self.probed[1][:, 0], kind="stable")
        for start in range(0, len(order), QUERY_CHUNK):
            yield order[start : start + QUERY_CHUNK]


@dataclass(frozen=True)
class InvertedFile:
    """An inverted file of unit rows on a :class:`Partition`, searched by those same rows: each
    row is stored in its nearest list and, as a query, probes the partition's nearest lists."""

    index: Any  #: faiss.IndexIVFScalarQuantizer
    partition: Partition
    probes: int  #: the nearest lists each query probes
    method: str  #: the search in words

    @classmethod
    def build(
        cls, rows: UnitRows, partition: Partition, probes: int, *, half_precision: bool = False
    ) -> InvertedFile:
        """Every row as 8-bit codes (or float16) in the partition's lists, each query to probe
        its ``probes`` nearest (at most the partition's). The codes are of the residuals from the
        list centres when the partition is of these rows, else of the rows themselves (the pair
        search's centred rows, in the lists of the plain ones)."""
        import faiss  # loaded only for sets this large
        from faiss.contrib.ivf_tools import add_preassigned

        n, dim = rows.vectors.shape
        index = faiss.IndexIVFScalarQuantizer(
            partition.quantizer,
            dim,
            partition.lists,
            faiss.ScalarQuantizer.QT_fp16 if half_precision else faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
            partition.rows is rows,
        )
        rng = np.random.default_rng(partition.seed)
        sample = rng.choice(n, size=min(n, TRAIN_PER_LIST * partition.lists), replace=False)
        index.train(rows.take(np.sort(sample)))  # the codes only: the quantizer is trained
        probes = min(probes, partition.probes)
        index.nprobe = probes
        nearest = np.ascontiguousarray(partition.probed[1][:, 0])
        for start, block in _blocks(rows, QUERY_CHUNK):
            add_preassigned(index, block, nearest[start : start + len(block)])
        codes = "float16" if half_precision else "8-bit"
        method = f"approximate (IVF: {partition.lists:,} lists, {probes} probed, {codes} codes)"
        return cls(index, partition, probes, method)

    def range_search(
        self, ids: np.ndarray, queries: np.ndarray, radius: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FAISS's range search of the rows ``ids`` (``queries``, in their probed lists)."""
        from faiss.contrib.ivf_tools import range_search_preassigned

        similarities, nearest = self._probed(ids)
        return range_search_preassigned(self.index, queries, radius, nearest, similarities)

    def search(self, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``k`` best of the rows ``ids`` (``queries``, in their probed lists)."""
        from faiss.contrib.ivf_tools import search_preassigned

        similarities, nearest = self._probed(ids)
        return search_preassigned(self.index, queries, k, nearest, similarities)

    def _probed(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The similarities and ids of the lists the rows ``ids`` probe."""
        return tuple(np.ascontiguousarray(a[ids, : self.probes]) for a in self.partition.probed)


def _each_pair_once(i: np.ndarray, j: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    _, first = np.unique(i * n + j, return_index=True)  # found from both ends: keep one
    return i[first], j[first]


def _sample(n: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, size=min(n, count), replace=False))


def _similarity_tiles(rows: UnitRows, queries: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, cosines of the query rows with rows start...)``, tiles of at most
    TILE_ELEMENTS similarities, the queries' own cosines set to -inf."""
    query_rows = rows.take(queries)
    step = tile_rows(len(queries), len(rows))
    for start, block in _blocks(rows, step):
        similarity = query_rows @ block.T
        own = np.nonzero((queries >= start) & (queries < start + len(block)))[0]
        similarity[own, queries[own] - start] = -np.inf
        yield start, similarity


def _range_recall(
    rows: UnitRows, threshold: float, i: np.ndarray, j: np.ndarray, seed: int
) -> tuple[float, int, int]:
    """Of the pairs exact search finds for a sample of query rows, the share in ``(i, j)``;
    with the sample's size and that count of pairs (a recall of 1 when there are none)."""
    queries = _sample(len(rows), RECALL_QUERIES, seed)
    exact: set[tuple[int, int]] = set()
    for start, similarity in _similarity_tiles(rows, queries):
        near, columns = np.nonzero(similarity >= threshold)
        near, columns = queries[near], columns + start
        exact.update(
            zip(np.minimum(near, columns).tolist(), np.maximum(near, columns).tolist(), strict=True)
        )
    sampled = np.isin(i, queries) | np.isin(j, queries)
    found = set(zip(i[sampled].tolist(), j[sampled].tolist(), strict=True))
    recall = len(exact & found) / len(exact) if exact else 1.0
    return recall, len(queries), len(exact)


def exact_neighbours(rows: UnitRows, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each of the rows ``queries``, by brute force over every
    row a tile at a time: ``(ids, cosines)``, each Q x k, in no particular order."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start, similarity in _similarity_tiles(rows, queries):
        candidates = np.concatenate([best, similarity], axis=1)
        columns = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
        ids = np.concatenate(
            [
                best_rows,
                np.broadcast_to(np.arange(start, start + similarity.shape[1]), similarity.shape),
            ],
            axis=1,
        )
        best = np.take_along_axis(candidates, columns, axis=1)
        best_rows = np.take_along_axis(ids, columns, axis=1)
    return best_rows, best


def _neighbour_recall(
    rows: UnitRows,
    neighbours: np.ndarray,
    near: np.ndarray,
    k: int,
    floor: float,
    seed: int,
    count: int,
) -> tuple[float, int, int]:
    """Of each sampled row's exact ``k`` nearest neighbours (cosine >= ``floor``), the share
    among the neighbours found for it; with the sample's size and the count of exact
    neighbours."""
    queries = _sample(len(rows), count, seed)
    best_rows, best = exact_neighbours(rows, queries, k)
    exact = best >= floor
    found = np.where(near[queries], neighbours[queries], -1)
    hits = sum(
        len(set(truth[keep].tolist()) & set(mine.tolist()))
        for truth, keep, mine in zip(best_rows, exact, found, strict=True)
    )
    total = int(exact.sum())
    return (hits / total if total else 1.0), len(queries), total
