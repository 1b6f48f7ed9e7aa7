"""Scan throughput: files per second, one worker against all cores, in one run.

    .venv/bin/python benchmarks/scan_bench.py [--images 2000] [--size 1024]

Generates (once, cached under benchmarks/out/) radiograph-like phantoms of about 1 megapixel,
mostly JPEG with some PNG, like the public fracture sets, then times ``scan_dataset``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from phantoms import make_images

from fracture_curate.scan import scan_dataset


def time_scan(folder: Path, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    frame = scan_dataset(folder, workers=workers).frame
    return time.perf_counter() - start, len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--png-fraction", type=float, default=0.2)
    args = parser.parse_args()

    folder = make_images("scan_images", args.images, args.size, args.png_fraction)
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores")
    print(f"{args.images} images, {args.size}x{args.size}, {args.png_fraction:.0%} PNG")
    time_scan(folder, cores)  # warm the page cache so both runs read from memory
    one_seconds, rows = time_scan(folder, 1)
    all_seconds, _ = time_scan(folder, cores)
    baseline = rows / one_seconds
    print(f"{'workers':>8} {'seconds':>8} {'files/s':>8} {'ratio':>6}")
    print(f"{1:>8} {one_seconds:>8.1f} {baseline:>8.1f} {1.0:>6.2f}")
    speedup = one_seconds / all_seconds
    print(f"{cores:>8} {all_seconds:>8.1f} {rows / all_seconds:>8.1f} {speedup:>6.2f}")


if __name__ == "__main__":
    main()
