"""Scan throughput: files per second, one worker against all cores, in one run.

    .venv/bin/python benchmarks/scan_bench.py [--images 2000] [--size 1024] [--repeats 3]

Generates (once, cached under benchmarks/out/) radiograph-like phantoms of about 1 megapixel,
mostly JPEG with some PNG, like the public fracture sets, then times ``scan_dataset``: after one
warm-up scan (the page cache), ``--repeats`` pairs of one worker then all cores, each pair's
ratio taken within it. Prints every pair, then each figure's median and worst pair.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from phantoms import make_images
from seeds import describe

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
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (1 worker, all)")
    args = parser.parse_args()

    folder = make_images("scan_images", args.images, args.size, args.png_fraction)
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores")
    print(f"{args.images} images, {args.size}x{args.size}, {args.png_fraction:.0%} PNG")
    time_scan(folder, cores)  # warm the page cache so every run reads from memory
    print(
        f"{'run':>4} {'1 worker s':>11} {'files/s':>8} {f'{cores} workers s':>11} {'files/s':>8}"
        f" {'ratio':>6}"
    )
    one_rates, all_rates, ratios = [], [], []
    for run in range(1, args.repeats + 1):
        one_seconds, rows = time_scan(folder, 1)
        all_seconds, _ = time_scan(folder, cores)
        one_rates.append(rows / one_seconds)
        all_rates.append(rows / all_seconds)
        ratios.append(one_seconds / all_seconds)
        print(
            f"{run:>4} {one_seconds:>11.1f} {one_rates[-1]:>8.1f} {all_seconds:>11.1f} "
            f"{all_rates[-1]:>8.1f} {ratios[-1]:>6.2f}"
        )
    runs = range(1, args.repeats + 1)
    print(f"files/s, 1 worker: {describe(one_rates, runs, form='{:.1f}', word='runs')}")
    print(f"files/s, {cores} workers: {describe(all_rates, runs, form='{:.1f}', word='runs')}")
    print(f"{cores} workers / 1 worker: {describe(ratios, runs, form='{:.2f}', word='runs')}")


if __name__ == "__main__":
    main()
