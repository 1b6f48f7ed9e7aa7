"""Drawing phantoms for `curate synth`: seconds per image against encoding it, in one run.

    .venv/bin/python benchmarks/synth_bench.py [--size 1024] [--images 20] [--repeats 3]

Generating a set costs drawing plus writing each image; the baseline is writing the same image
as a JPEG (quality 92) and as a PNG, the two formats the sets use. This replaces a unit test
that asserted a wall-clock time on a shared machine. Each of ``--repeats`` runs times the three
steps in turn (draw: median of --images, encodings: median of 5) and takes the ratios within the
run; the median and the worst run of each figure are printed.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import numpy as np
from seeds import describe

from fracture_curate.synthetic import draw_phantom
from fracture_curate.synthetic.writer import encode


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    draw_phantom(rng, args.size, True)  # warm-up
    image = draw_phantom(rng, args.size, True)
    print(f"machine: {platform.machine()}, {args.size} x {args.size} px, median of {args.images}")
    drawn, encodings = [], {"JPEG": [], "PNG": []}
    for run in range(1, args.repeats + 1):
        drawn.append(median_seconds(lambda: draw_phantom(rng, args.size, True), args.images))
        for name, quality in (("JPEG", 92), ("PNG", None)):  # the sets' own encoder and settings
            encodings[name].append(
                median_seconds(functools.partial(encode, image, name, quality), 5)
            )
        print(
            f"run {run}: draw {drawn[-1] * 1000:.1f} ms, "
            + ", ".join(f"{name} {times[-1] * 1000:.1f} ms" for name, times in encodings.items())
        )
    runs = range(1, args.repeats + 1)
    ms = [value * 1000 for value in drawn]
    print(f"{'draw a fractured phantom':>26}: {describe(ms, runs, False, '{:.1f} ms', 'runs')}")
    for name, times in encodings.items():
        ratios = [d / t for d, t in zip(drawn, times, strict=True)]
        ms = [value * 1000 for value in times]
        print(f"{'encode it as ' + name:>26}: {describe(ms, runs, False, '{:.1f} ms', 'runs')}")
        print(f"{'draw / encode':>26}: {describe(ratios, runs, None, '{:.2f}', 'runs')}")


if __name__ == "__main__":
    main()
