"""Exact against approximate similarity search, side by side in one run: seconds, peak memory,
pairs, planted recall, and the approximate search's recall of exact search's pairs.

    .venv/bin/python benchmarks/ann_bench.py [--sizes 100000] [--probes 8] [--repeats 3]

The embeddings are those of ``dedupe_scale.py`` (structured like MobileNetV2 features, 1%
planted near-duplicates), centred and normalised as dedupe does; the threshold is dedupe's
default. Each search runs in a fresh process so its peak memory is its own; the speed-up is
exact over approximate within one repeat. Printed per repeat, then as median (worst).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from dedupe_scale import structured_embeddings
from seeds import describe

from fracture_curate.ann import similar_pairs
from fracture_curate.dedupe import DedupeConfig
from fracture_curate.vectors import centred_unit_rows


def run_one(n: int, search: str, probes: int) -> dict[str, object]:
    vectors, planted = structured_embeddings(n)
    start = time.perf_counter()
    unit = centred_unit_rows(vectors)
    i, j, _, report = similar_pairs(
        unit, DedupeConfig.cosine_threshold, search=search, probes=probes
    )
    seconds = time.perf_counter() - start
    found = sorted(zip(i.tolist(), j.tolist(), strict=True))
    planted_pairs = {(min(a, b), max(a, b)) for a, b in planted.tolist()}
    return {
        "seconds": seconds,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "pairs": found,
        "planted_recall": len(planted_pairs & set(found)) / len(planted_pairs),
        "sampled_recall": report.recall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--probes", type=int, default=DedupeConfig.probes)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, search, probes = args.child
        print(json.dumps(run_one(int(n), search, int(probes))))
        return
    runs = list(range(1, args.repeats + 1))
    for n in args.sizes:
        figures: dict[str, list[float]] = {}
        for run in runs:
            results = {}
            for search in ("exact", "approximate"):
                command = [sys.executable, __file__, "--child", str(n), search, str(args.probes)]
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                results[search] = json.loads(output.stdout)
            exact = {tuple(pair) for pair in results["exact"]["pairs"]}
            approximate = {tuple(pair) for pair in results["approximate"]["pairs"]}
            row = {
                "exact s": results["exact"]["seconds"],
                "approximate s": results["approximate"]["seconds"],
                "speed-up": results["exact"]["seconds"] / results["approximate"]["seconds"],
                "exact GiB": results["exact"]["peak_gib"],
                "approximate GiB": results["approximate"]["peak_gib"],
                "recall vs exact": len(exact & approximate) / max(len(exact), 1),
                "sampled recall": results["approximate"]["sampled_recall"],
                "planted recall exact": results["exact"]["planted_recall"],
                "planted recall approximate": results["approximate"]["planted_recall"],
            }
            print(
                f"n={n:,} run {run}: "
                + ", ".join(f"{key} {value:.3f}" for key, value in row.items())
                + f", pairs {len(exact):,} / {len(approximate):,}",
                flush=True,
            )
            for key, value in row.items():
                figures.setdefault(key, []).append(value)
        print(f"n={n:,}, median (worst) over runs {runs[0]}-{runs[-1]}:")
        for key, values in figures.items():
            better_high = key in ("speed-up",) or "recall" in key
            print(f"  {key}: {describe(values, runs, better_high, '{:.3f}', 'runs')}")


if __name__ == "__main__":
    main()
