"""Embedding dedupe at scale: seconds and peak memory for 10k, 30k and 100k 1280-d embeddings.

    .venv/bin/python benchmarks/dedupe_scale.py [--sizes 10000 30000 100000] [--repeats 3]

The embeddings are structured like MobileNetV2 pooled features: non-negative, sparse-ish, drawn
around a few hundred cluster centres (similar-looking images), with 1% of them planted as near
duplicates of another. Each size runs in a fresh process so its peak RSS is its own. Recall is of
the planted pairs; at the smallest size the result is also compared with a brute-force search.
The sizes run in turn ``--repeats`` times (the same embeddings each time); the seconds, the peak
memory and the cost against the smallest size of the same repeat are printed per run, then as the
median and the worst run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from seeds import describe

from fracture_curate.dedupe import DedupeConfig
from fracture_curate.vectors import centred_unit_rows, cosine_pairs


def structured_embeddings(n: int, dim: int = 1280, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N x dim float32 features and the (copy, original) rows of the planted near-duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.6, 1.0, size=(300, dim)).astype(np.float32)
    centres *= rng.random((300, dim)) < 0.35  # sparse, like ReLU6 features
    members = rng.integers(0, len(centres), n)
    vectors = centres[members] * rng.lognormal(0, 0.35, size=(n, dim)).astype(np.float32)
    vectors += rng.gamma(0.3, 0.3, size=(n, dim)).astype(np.float32)
    copies = rng.choice(n, size=n // 100, replace=False)
    originals = rng.integers(0, n, len(copies))
    keep = copies != originals
    copies, originals = copies[keep], originals[keep]
    vectors[copies] = vectors[originals] * rng.normal(1, 0.03, size=(len(copies), dim))
    return np.maximum(vectors, 0, dtype=np.float32), np.stack([copies, originals], axis=1)


def run_one(n: int, brute_force: bool) -> dict[str, float]:
    vectors, planted = structured_embeddings(n)
    config = DedupeConfig()
    start = time.perf_counter()
    unit = centred_unit_rows(vectors)
    found = set()
    for i, j, _ in cosine_pairs(unit, config.cosine_threshold, block=config.block):
        found.update(zip(i.tolist(), j.tolist(), strict=True))
    seconds = time.perf_counter() - start
    planted_pairs = {(min(a, b), max(a, b)) for a, b in planted.tolist()}
    result = {
        "n": n,
        "seconds": seconds,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "pairs": len(found),
        "planted_recall": len(planted_pairs & found) / len(planted_pairs),
    }
    if brute_force:
        exact = set()
        for start_row in range(0, n, 1024):
            block = unit[start_row : start_row + 1024] @ unit.T
            i, j = np.nonzero(block >= config.cosine_threshold)
            i += start_row
            exact.update((a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True) if a < b)
        result["recall_vs_brute_force"] = len(exact & found) / max(len(exact), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--brute-force", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.brute_force)))
        return
    print(f"machine: {platform.machine()}, threshold {DedupeConfig.cosine_threshold}")
    print(
        f"{'run':>4} {'n':>8} {'seconds':>8} {'peak GiB':>9} {'pairs':>8} {'recall':>7} "
        f"{'vs brute':>9}"
    )
    runs = range(1, args.repeats + 1)
    figures: dict[int, dict[str, list[float]]] = {n: {} for n in args.sizes}
    for run in runs:
        baseline = None
        for index, n in enumerate(args.sizes):
            command = [sys.executable, __file__, "--child", str(n)]
            command += ["--brute-force"] if index == 0 else []
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output)
            baseline = baseline or result["seconds"] / n**2
            result["cost"] = result["seconds"] / n**2 / baseline
            brute = result.get("recall_vs_brute_force")
            print(
                f"{run:>4} {n:>8} {result['seconds']:>8.1f} {result['peak_gib']:>9.2f} "
                f"{result['pairs']:>8} {result['planted_recall']:>7.3f} "
                f"{'' if brute is None else f'{brute:.3f}':>9}"
                f"   time / n^2 vs first: {result['cost']:.2f}",
                flush=True,
            )
            for key in ("seconds", "peak_gib", "cost"):
                figures[n].setdefault(key, []).append(result[key])
    print("median and worst (the highest) over the runs:")
    for n, by_key in figures.items():
        print(
            f"{n:>8}: seconds {describe(by_key['seconds'], runs, False, '{:.1f}', 'runs')}; "
            f"peak GiB {describe(by_key['peak_gib'], runs, False, '{:.2f}', 'runs')}; "
            f"time / n^2 vs first {describe(by_key['cost'], runs, False, '{:.2f}', 'runs')}"
        )


if __name__ == "__main__":
    main()
