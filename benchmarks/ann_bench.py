"""Exact against approximate similarity search, side by side in one run: seconds, peak memory,
pairs, planted recall, and the approximate search's recall of exact search's pairs.

    .venv/bin/python benchmarks/ann_bench.py [--sizes 100000] [--probes 8] [--repeats 3]

The embeddings are those of ``dedupe_scale.py`` (structured like MobileNetV2 features, 1%
planted near-duplicates). Each search runs what dedupe runs on them: the pairs above its cosine
threshold among the centred rows, and each row's nearest neighbours by plain cosine for the
geometry layer (16, cosine >= 0.5). Each method runs in a fresh process so its peak memory is
its own; the speed-up is exact over approximate within one repeat. Printed per repeat, then as
median (worst).
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

from fracture_curate.ann import Partition, neighbour_pairs, similar_pairs
from fracture_curate.dedupe import DedupeConfig
from fracture_curate.vectors import UnitRows


def run_one(n: int, search: str, probes: int) -> dict[str, object]:
    vectors, planted = structured_embeddings(n)
    config = DedupeConfig()
    start = time.perf_counter()
    plain = UnitRows(vectors)
    # Shared, as dedupe shares it; built by the first search.
    partition = Partition(plain, max(probes, config.neighbour_probes))
    i, j, _, report = similar_pairs(
        UnitRows.centred(vectors),
        config.cosine_threshold,
        search=search,
        probes=probes,
        partition=partition,
    )
    middle = time.perf_counter()
    ni, nj, _, neighbours = neighbour_pairs(
        plain,
        config.geometry_neighbours,
        config.geometry_floor,
        search=search,
        probes=config.neighbour_probes,
        partition=partition,
    )
    end = time.perf_counter()
    found = sorted(zip(i.tolist(), j.tolist(), strict=True))
    planted_pairs = {(min(a, b), max(a, b)) for a, b in planted.tolist()}
    return {
        "seconds": middle - start,
        "neighbour_seconds": end - middle,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "pairs": found,
        "neighbours": sorted(zip(ni.tolist(), nj.tolist(), strict=True)),
        "planted_recall": len(planted_pairs & set(found)) / len(planted_pairs),
        "sampled_recall": report.recall,
        "sampled_neighbour_recall": neighbours.recall,
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
            exact, approximate = (
                {tuple(pair) for pair in results[search]["pairs"]}
                for search in ("exact", "approximate")
            )
            near, found_near = (
                {tuple(pair) for pair in results[search]["neighbours"]}
                for search in ("exact", "approximate")
            )
            seconds = {
                search: results[search]["seconds"] + results[search]["neighbour_seconds"]
                for search in results
            }
            row = {
                "exact s": results["exact"]["seconds"],
                "approximate s": results["approximate"]["seconds"],
                "speed-up": results["exact"]["seconds"] / results["approximate"]["seconds"],
                "neighbours exact s": results["exact"]["neighbour_seconds"],
                "neighbours approximate s": results["approximate"]["neighbour_seconds"],
                "neighbours speed-up": results["exact"]["neighbour_seconds"]
                / results["approximate"]["neighbour_seconds"],
                "both speed-up": seconds["exact"] / seconds["approximate"],
                "exact GiB": results["exact"]["peak_gib"],
                "approximate GiB": results["approximate"]["peak_gib"],
                "recall vs exact": len(exact & approximate) / max(len(exact), 1),
                "neighbour pair recall vs exact": len(near & found_near) / max(len(near), 1),
                "sampled recall": results["approximate"]["sampled_recall"],
                "sampled neighbour recall": results["approximate"]["sampled_neighbour_recall"],
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
            better_high = "speed-up" in key or "recall" in key
            print(f"  {key}: {describe(values, runs, better_high, '{:.3f}', 'runs')}")


if __name__ == "__main__":
    main()
