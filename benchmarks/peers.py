"""fracture-curate against fastdup on one generated set, side by side in one run: each tool's wall
time for its whole pipeline, and the planted copies it groups with their source.

    .venv/bin/python benchmarks/peers.py --fastdup-python FASTDUP_VENV/bin/python [--per-class 500]

The set is ``curate synth DIR --per-class 500``: 1,801 files (1,000 originals, 50 planted copies
of each of 10 kinds, 50 outliers, other films of some originals' anatomy, and bad or dropped
files). fracture-curate runs its four commands, each timed: ``curate scan``, ``embed``,
``dedupe`` (every layer) and ``outliers``; and ``dedupe`` once more with ``--no-screen`` (the
geometry layer before its screen). fastdup 2.54 runs in its own virtual environment (it pins old
numpy and Pillow: ``python3 -m venv V && V/bin/pip install fastdup==2.54``), as
``fastdup.create(work_dir, input_dir).run()`` and its connected components, in one process,
timed from the outside like ours. A planted copy is found when it lands in its source's group;
a grouped pair is wrong when it joins images of two different originals.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fracture_curate.manifest import manifest_path, read_manifest
from fracture_curate.synthetic import (
    DUPLICATE_KINDS,
    planted_vs_found,
    read_record,
    source_families,
)

OUT = Path(__file__).parent / "out" / "peers"
CURATE = str(Path(sys.executable).with_name("curate"))

#: Run in fastdup's own environment: its groups (connected components at its default
#: threshold) as JSON lines of {path, group}, paths relative to the input folder.
FASTDUP_SCRIPT = """
import json, os, sys
import fastdup
data, work = sys.argv[1], sys.argv[2]
fd = fastdup.create(work_dir=work, input_dir=data)
fd.run(overwrite=True)
groups = fd.connected_components()[0]  # with the file names; images in no group are absent
for filename, group in zip(groups["filename"], groups["component_id"]):
    path = os.path.relpath(os.path.abspath(filename), data)
    print(json.dumps({"path": path, "group": int(group)}))
"""


def timed(command: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - start, done


def grouped_pairs(groups: pd.Series) -> set[tuple[str, str]]:
    """Every pair of paths that share a group (``groups``: path -> group, null alone)."""
    pairs = set()
    for _, members in groups.dropna().groupby(groups.dropna()):
        pairs.update(itertools.combinations(sorted(members.index), 2))
    return pairs


def score(groups: pd.Series, record: pd.DataFrame) -> dict[str, int]:
    """Planted copies found (of the kinds every tool is asked to find) and wrong pairs."""
    alone = pd.Series([f"alone {k}" for k in range(len(groups))], index=groups.index)
    clusters = groups.astype(object).fillna(alone)
    # Scan statuses are not compared here: every file a tool grouped or left alone is "ok".
    frame = pd.DataFrame({"path": groups.index, "cluster_id": clusters.to_numpy(), "status": "ok"})
    found = planted_vs_found(record, frame)
    copies = found.loc[found.index.isin(DUPLICATE_KINDS), ["planted", "found"]].astype(int)
    family = source_families(record)
    pairs = grouped_pairs(groups)
    wrong = sum(family.get(a, a) != family.get(b, b) for a, b in pairs)
    result = {
        "copies planted": int(copies["planted"].sum()),
        "copies found": int(copies["found"].sum()),
    }
    result |= {f"found {kind}": int(copies.loc[kind, "found"]) for kind in copies.index}
    return result | {"grouped pairs": len(pairs), "wrong pairs": wrong}


def ours(data: Path, work: Path, screen: bool) -> tuple[dict[str, float], pd.Series]:
    """fracture-curate's four commands, each timed; and its duplicate clusters by path."""
    manifests = work / "manifests"
    shutil.rmtree(manifests, ignore_errors=True)
    seconds = {}
    for stage, extra in (
        ("scan", [str(data), "--out"]),
        ("embed", ["--manifests"]),
        ("dedupe", ["--manifests"]),
        ("outliers", ["--manifests"]),
    ):
        options = ["--no-screen"] if stage == "dedupe" and not screen else []
        seconds[stage], _ = timed([CURATE, stage, *extra, str(manifests), *options])
    frame = read_manifest(manifest_path(manifests, "outliers"))
    groups = frame.set_index("path")["cluster_id"].where(
        frame.set_index("path")["cluster_size"] > 1
    )
    return seconds, groups


def fastdup(python: str, data: Path, work: Path) -> tuple[float, pd.Series]:
    shutil.rmtree(work / "fastdup", ignore_errors=True)
    environment = os.environ | {"SENTRY_OPT_OUT": "1"}
    seconds, done = timed(
        [python, "-c", FASTDUP_SCRIPT, str(data), str(work / "fastdup")], env=environment
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    groups = pd.Series({row["path"]: row["group"] for row in rows}, dtype="object")
    counts = groups.value_counts()
    groups = groups.where(groups.map(counts).fillna(0) > 1)
    return seconds, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fastdup-python", required=True, help="python of fastdup's venv")
    parser.add_argument("--per-class", type=int, default=500)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        work = Path(folder)
        data = work / "data"
        subprocess.run(
            [CURATE, "synth", str(data), "--per-class", str(args.per_class)],
            check=True,
            capture_output=True,
        )
        files = sum(1 for path in data.rglob("*") if path.is_file() and path.name != "planted.csv")
        record = read_record(data)
        print(f"set: curate synth --per-class {args.per_class}: {files:,} files")
        rows = {}
        stages, groups = ours(data, work, screen=True)
        rows["fracture-curate"] = {"seconds": sum(stages.values())} | score(groups, record)
        print("fracture-curate stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
        unscreened, groups = ours(data, work, screen=False)
        rows["fracture-curate, geometry unscreened"] = {
            "seconds": sum(unscreened.values())
        } | score(groups, record)
        print(f"dedupe: {stages['dedupe']:.1f} s screened, {unscreened['dedupe']:.1f} s unscreened")
        seconds, groups = fastdup(args.fastdup_python, data, work)
        rows["fastdup 2.54"] = {"seconds": seconds} | score(groups, record)
    table = pd.DataFrame(rows).T
    table["x fastdup"] = table["seconds"] / table.loc["fastdup 2.54", "seconds"]
    print(table.to_string(float_format=lambda value: f"{value:.2f}"))


if __name__ == "__main__":
    main()
