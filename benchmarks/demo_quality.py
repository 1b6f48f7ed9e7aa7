"""What `make demo`'s pipeline finds on its own generated set, over several synth seeds.

    .venv/bin/python benchmarks/demo_quality.py [--seeds 0-4] [--per-class 80]

For each seed: ``curate synth DIR --per-class 80 --seed S`` (the demo set: 160 originals a split,
8 planted copies of each kind, 8 colour-photo outliers, 8 of each unusable file), then ``curate
scan``, ``embed``, ``dedupe`` and ``outliers`` with their defaults, as the Makefile runs them
(the same commands, each its own process), under benchmarks/out/demo/seed-S/. The manifests are
then read against the set's planted.csv (:func:`fracture_curate.synthetic.planted_vs_found`, the
rules the report uses): found per planted kind, grouped pairs and wrong pairs (members of
different originals), clean originals flagged as outliers. Each figure is printed as its median
over the seeds and its worst seed. `make demo` itself is seed 0.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from curation_quality import grouped_pairs
from seeds import describe, parse_seeds, seed_range

from fracture_curate.manifest import manifest_path, read_manifest
from fracture_curate.schema import flags
from fracture_curate.synthetic import planted_vs_found, read_record, source_families

OUT = Path(__file__).parent / "out" / "demo"
CURATE = Path(sys.executable).parent / "curate"


def curate(*args: str) -> None:
    done = subprocess.run([str(CURATE), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"curate {' '.join(args)} exited {done.returncode}:\n{done.stderr}")


def run_pipeline(seed: int, per_class: int) -> tuple[Path, Path]:
    """The Makefile's demo commands up to the outliers, for one seed: (data, manifests)."""
    root = OUT / f"seed-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    data, manifests = root / "data", root / "manifests"
    curate("synth", str(data), "--per-class", str(per_class), "--seed", str(seed))
    curate("scan", str(data), "--out", str(manifests))
    for stage in ("embed", "dedupe", "outliers"):
        curate(stage, "--manifests", str(manifests))
    return data, manifests


def measure(data: Path, manifests: Path) -> tuple[pd.Series, dict[str, float]]:
    """Found per planted kind, and the pair and flag figures, from one seed's manifests."""
    frame = read_manifest(manifest_path(manifests, "outliers"))
    record = read_record(data)
    found = planted_vs_found(record, frame)
    family = source_families(record)
    pairs = grouped_pairs(frame)
    wrong = sum(family.get(a, a) != family.get(b, b) for a, b in pairs)
    flagged = frame.set_index("path")["is_outlier"]
    originals = record.loc[record["kind"] == "original", "path"]
    films = record.loc[record["kind"] == "follow_up", "path"]  # radiographs too, not strangers
    scores = {
        "grouped pairs": len(pairs),
        "wrong pairs": wrong,
        "clean originals": len(originals),
        "clean flagged": int(flags(flagged.reindex(originals)).sum()),
        "other films": len(films),
        "other films flagged": int(flags(flagged.reindex(films)).sum()),
    }
    return found["found"].astype(int), scores | {"planted": found["planted"].astype(int)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="curate synth seeds: A-B, A,B,C or A")
    parser.add_argument("--per-class", type=int, default=80, help="as in the Makefile's demo")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    found, scores = {}, {}
    for seed in seeds:
        start = time.perf_counter()
        data, manifests = run_pipeline(seed, args.per_class)
        found[seed], scores[seed] = measure(data, manifests)
        print(
            f"seed {seed}: outliers {found[seed].get('outlier', 0)} of "
            f"{scores[seed]['planted'].get('outlier', 0)}, "
            f"{scores[seed]['clean flagged']} of {scores[seed]['clean originals']} clean flagged, "
            f"{scores[seed]['grouped pairs']} grouped pairs, {scores[seed]['wrong pairs']} wrong "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    span = seed_range(seeds)
    planted = scores[seeds[0]]["planted"]
    table = pd.DataFrame(found).reindex(planted.index)
    print(f"\ndemo set (curate synth --per-class {args.per_class}), {span}: found per planted kind")
    summary = pd.DataFrame(
        {
            "planted": planted,
            "found median": table.median(axis=1),
            "found worst": table.min(axis=1),
            "recall median": (table.div(planted, axis=0)).median(axis=1),
            "recall worst": (table.div(planted, axis=0)).min(axis=1),
            "found per seed": table.astype(int).astype(str).agg(" ".join, axis=1),
        }
    )
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    frame = pd.DataFrame(scores).T
    shares = frame["clean flagged"] / frame["clean originals"]
    print(f"\nclean originals flagged: {describe(shares, seeds, False, '{:.2%}')}")
    per_seed = " ".join(str(value) for value in frame["clean flagged"])
    print(f"  per seed: {per_seed} of {frame['clean originals'].iloc[0]}")
    films = " ".join(str(value) for value in frame["other films flagged"])
    print(
        "other films of an original flagged as outliers: "
        f"{describe(frame['other films flagged'], seeds, False, '{:.0f}')}"
    )
    print(f"  per seed: {films} of {frame['other films'].iloc[0]}")
    grouped = frame["grouped pairs"].astype(int)
    print(
        f"grouped pairs: {np.median(grouped):.0f} median, {grouped.min()}-{grouped.max()} range "
        f"({span})"
    )
    print(f"wrong pairs: {describe(frame['wrong pairs'], seeds, False, '{:.0f}')}")
    outliers = table.loc["outlier"] / planted["outlier"]
    print(f"planted outliers flagged: {describe(outliers, seeds)}")


if __name__ == "__main__":
    main()
