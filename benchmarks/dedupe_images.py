"""The whole dedupe, every layer on, over a generated set of about 10^5 images: seconds, peak
memory, and the planted copies found.

    .venv/bin/python benchmarks/dedupe_images.py [--per-class 27700]     # about 45 minutes

The set is ``curate synth DIR --per-class N`` (N = 27,700: about 10^5 files, a tenth of them
planted copies of 10 kinds), scanned and embedded once (cached under
benchmarks/out/images-N/ while its settings hold); then ``curate dedupe`` runs as a command and
is timed from the outside, its peak memory that of the process. Beyond 30,000 images both of its
embedding searches are approximate (FAISS), and the geometry layer screens each image's 16
nearest neighbours before verifying the pairs that pass.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from peers import CURATE, score

from fracture_curate.manifest import manifest_path, read_manifest
from fracture_curate.synthetic import read_record


def prepared(per_class: int) -> tuple[Path, Path]:
    """The set and its scan and embed manifests, made once."""
    folder = Path(__file__).parent / "out" / f"images-{per_class}"
    data, manifests = folder / "data", folder / "manifests"
    if not manifest_path(manifests, "embed").exists():
        for command in (
            ["synth", str(data), "--per-class", str(per_class)],
            ["scan", str(data), "--out", str(manifests)],
            ["embed", "--manifests", str(manifests)],
        ):
            start = time.perf_counter()
            subprocess.run([CURATE, *command], check=True, capture_output=True)
            print(f"{command[0]}: {time.perf_counter() - start:.0f} s", flush=True)
    return data, manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=27_700)
    args = parser.parse_args()
    data, manifests = prepared(args.per_class)
    scan = read_manifest(manifest_path(manifests, "scan"))
    print(f"{len(scan):,} files, {(scan['status'] == 'ok').sum():,} readable", flush=True)
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", CURATE, "dedupe", "--manifests", str(manifests)],
        check=True,
        capture_output=True,
        text=True,
    )
    wall, kib = done.stderr.split()[-2:]
    seconds, peak = float(wall), int(kib) / 2**20
    print(done.stdout)
    frame = read_manifest(manifest_path(manifests, "dedupe"))
    groups = frame.set_index("path")["cluster_id"].where(
        frame.set_index("path")["cluster_size"] > 1
    )
    found = score(groups, read_record(data))
    print(f"dedupe, every layer: {seconds:.0f} s ({seconds / 60:.1f} min), peak {peak:.2f} GiB")
    print(", ".join(f"{key} {value}" for key, value in found.items()))


if __name__ == "__main__":
    main()
