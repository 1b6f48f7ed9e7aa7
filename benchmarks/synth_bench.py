"""Drawing phantoms for `curate synth`: seconds per image against encoding it, in one run.

    .venv/bin/python benchmarks/synth_bench.py [--size 1024] [--images 20]

Generating a set costs drawing plus writing each image; the baseline is writing the same image
as a JPEG (quality 92) and as a PNG, the two formats the sets use. This replaces a unit test
that asserted a wall-clock time on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import numpy as np

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
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    draw_phantom(rng, args.size, True)  # warm-up
    drawn = median_seconds(lambda: draw_phantom(rng, args.size, True), args.images)
    image = draw_phantom(rng, args.size, True)
    encodings = {  # the sets' own encoder and settings
        name: median_seconds(functools.partial(encode, image, name, quality), 5)
        for name, quality in (("JPEG", 92), ("PNG", None))
    }
    print(f"machine: {platform.machine()}, {args.size} x {args.size} px, median of {args.images}")
    print(f"{'draw a fractured phantom':>26}: {drawn * 1000:7.1f} ms")
    for name, seconds in encodings.items():
        ratio = drawn / seconds
        print(f"{'encode it as ' + name:>26}: {seconds * 1000:7.1f} ms   draw / encode {ratio:.2f}")


if __name__ == "__main__":
    main()
