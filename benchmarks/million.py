"""Dedupe's two embedding searches at a million images: seconds, peak memory, planted recall and
recall against exact k-nearest-neighbour search on sampled queries.

    .venv/bin/python benchmarks/million.py [--n 1000000] [--queries 10000]

The embeddings are structured like MobileNetV2's pooled features (``dedupe_scale.py``: 1280-d,
non-negative, around 300 cluster centres, 1% planted near duplicates), generated a block at a
time and held as float16 (2.4 GiB at 10^6; float32 would be 4.8 GiB). Dedupe's searches run on
them as dedupe runs them beyond ``ann.EXACT_LIMIT``: the pairs above its cosine threshold among
the centred rows (8-bit inverted file, candidates re-ranked exactly), then each row's 16 nearest
neighbours by plain cosine for the geometry layer (float16 inverted file). Exact search at this
size takes hours (n^2), so recall is measured against exact search on ``--queries`` sampled rows:
the share of their exact 16 nearest neighbours that are among the pairs found. Peak memory is the
process's maximum resident set.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np

from fracture_curate.ann import Partition, exact_neighbours, neighbour_pairs, similar_pairs
from fracture_curate.dedupe import DedupeConfig
from fracture_curate.vectors import UnitRows

BLOCK = 50_000


def structured_float16(n: int, dim: int = 1280, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``dedupe_scale.structured_embeddings`` drawn a block at a time into float16: N x dim, and
    the (copy, original) rows of the planted near duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.6, 1.0, size=(300, dim)).astype(np.float32)
    centres *= rng.random((300, dim)) < 0.35  # sparse, like ReLU6 features
    vectors = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        block = centres[rng.integers(0, len(centres), size)]
        block *= rng.lognormal(0, 0.35, size=(size, dim)).astype(np.float32)
        block += rng.gamma(0.3, 0.3, size=(size, dim)).astype(np.float32)
        vectors[start : start + size] = block
    copies = rng.choice(n, size=n // 100, replace=False)
    originals = rng.integers(0, n, len(copies))
    keep = copies != originals
    copies, originals = copies[keep], originals[keep]
    for start in range(0, len(copies), BLOCK):
        rows = slice(start, start + BLOCK)
        noise = rng.normal(1, 0.03, size=(len(copies[rows]), dim)).astype(np.float32)
        vectors[copies[rows]] = np.maximum(vectors[originals[rows]].astype(np.float32) * noise, 0)
    return vectors, np.stack([copies, originals], axis=1)


def neighbour_recall(
    rows: UnitRows, i: np.ndarray, j: np.ndarray, k: int, floor: float, queries: np.ndarray
) -> tuple[float, int]:
    """Of the sampled rows' exact ``k`` nearest neighbours (cosine >= ``floor``), the share
    among the pairs ``(i, j)`` found; and their count."""
    best_ids, best = exact_neighbours(rows, queries, k)
    sampled = np.isin(i, queries) | np.isin(j, queries)
    found = set(zip(i[sampled].tolist(), j[sampled].tolist(), strict=True))
    exact = [
        (min(q, int(other)), max(q, int(other)))
        for q, others, cosines in zip(queries.tolist(), best_ids, best, strict=True)
        for other, cosine in zip(others, cosines, strict=True)
        if cosine >= floor
    ]
    return sum(pair in found for pair in exact) / max(len(exact), 1), len(exact)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=DedupeConfig.probes)
    parser.add_argument("--neighbour-probes", type=int, default=DedupeConfig.neighbour_probes)
    args = parser.parse_args()
    config = DedupeConfig()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; n={args.n:,}")
    start = time.perf_counter()
    vectors, planted = structured_float16(args.n)
    print(
        f"generated in {time.perf_counter() - start:.0f} s; peak {peak_gib():.2f} GiB", flush=True
    )

    start = time.perf_counter()
    centred, plain = UnitRows.centred(vectors), UnitRows(vectors)
    # Shared by both searches, as in dedupe.
    partition = Partition(plain, max(args.probes, args.neighbour_probes))
    i, j, _, report = similar_pairs(
        centred,
        config.cosine_threshold,
        search="approximate",
        probes=args.probes,
        partition=partition,
    )
    pairs_seconds = time.perf_counter() - start
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    copies, originals = planted.min(axis=1), planted.max(axis=1)
    # A planted copy whose 3% noise put it under the threshold is no pair, for any search.
    above = centred.cosines(copies, originals) >= config.cosine_threshold
    planted_pairs = set(zip(copies.tolist(), originals.tolist(), strict=True))
    reachable = set(zip(copies[above].tolist(), originals[above].tolist(), strict=True))
    print(f"pairs: {pairs_seconds:.0f} s, {len(found):,} pairs; {report.line()}", flush=True)
    print(
        f"  planted near duplicates found: {len(planted_pairs & found) / len(planted_pairs):.4f} "
        f"of {len(planted_pairs):,}; of the {len(reachable):,} above the threshold "
        f"{len(reachable & found) / len(reachable):.4f}"
    )
    print(f"  peak so far {peak_gib():.2f} GiB", flush=True)

    start = time.perf_counter()
    ni, nj, _, neighbours = neighbour_pairs(
        plain,
        config.geometry_neighbours,
        config.geometry_floor,
        search="approximate",
        probes=args.neighbour_probes,
        partition=partition,
    )
    neighbour_seconds = time.perf_counter() - start
    print(
        f"neighbours: {neighbour_seconds:.0f} s, {len(ni):,} pairs; {neighbours.line()}",
        flush=True,
    )
    print(
        f"searches: {pairs_seconds + neighbour_seconds:.0f} s "
        f"({(pairs_seconds + neighbour_seconds) / 60:.1f} min); peak {peak_gib():.2f} GiB",
        flush=True,
    )

    start = time.perf_counter()
    queries = np.sort(np.random.default_rng(7).choice(args.n, args.queries, replace=False))
    recall, count = neighbour_recall(
        plain, ni, nj, config.geometry_neighbours, config.geometry_floor, queries
    )
    print(
        f"recall of exact 16-nearest-neighbour search on {args.queries:,} sampled rows: "
        f"{recall:.4f} of {count:,} neighbours ({time.perf_counter() - start:.0f} s to measure)"
    )


if __name__ == "__main__":
    main()
