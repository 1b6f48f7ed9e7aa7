"""Decoding cost of a 16-bit DICOM radiograph against the same image as PNG and JPEG.

    .venv/bin/python benchmarks/dicom_decode.py [--repeats 5]

The chest radiograph RG1 of pydicom-data (1955 x 1841, 3.6 MP, 15 bits stored) in its three
encodings (uncompressed, lossless and lossy JPEG 2000), and the loader's own output of it saved
as a 16-bit PNG and an 8-bit JPEG (quality 90). Each is read from memory by the one image loader
(``fracture_curate.images.load_image``: decode, then for DICOM the modality LUT, window and
MONOCHROME1 inversion) in one process on one core, ``--repeats`` times in turn; the figures are
the median and the worst wall time per image, images per second, the ratio to the PNG measured
in the same run, the CPU time over the wall time (above 1 where a decoder runs threads of its
own: OpenJPEG does) and images per second per core (from the CPU time).
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from seeds import median_worst

from fracture_curate.images import load_image, to_uint8


def inputs() -> dict[str, bytes]:
    """Every encoding of RG1, as file bytes."""
    encoded = {}
    for name, label in (
        ("RG1_UNCR", "DICOM uncompressed"),
        ("RG1_J2KR", "DICOM JPEG 2000 lossless"),
        ("RG1_J2KI", "DICOM JPEG 2000 lossy"),
    ):
        with open(get_testdata_file(f"{name}.dcm"), "rb") as file:
            encoded[label] = file.read()
    pixels = load_image(encoded["DICOM uncompressed"]).pixels
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    encoded["PNG 16-bit"] = png.getvalue()
    jpeg = io.BytesIO()
    Image.fromarray(to_uint8(pixels)).save(jpeg, format="JPEG", quality=90)
    encoded["JPEG 8-bit q90"] = jpeg.getvalue()
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed reads of each encoding")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    encoded = inputs()
    times: dict[str, list[float]] = {label: [] for label in encoded}
    cpu: dict[str, list[float]] = {label: [] for label in encoded}
    for data in encoded.values():
        load_image(data)  # warm-up: imports and decoder set-up
    for _ in range(args.repeats):
        for label, data in encoded.items():  # in turn, so drift touches every encoding alike
            start, start_cpu = time.perf_counter(), time.process_time()
            load_image(data)
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
    png = float(np.median(times["PNG 16-bit"]))
    print(f"RG1 chest radiograph, 1955 x 1841 (3.6 MP); runs 1-{args.repeats}, one process")
    header = f"{'encoding':<26} {'MB':>5} {'ms/image median (worst)':>24} {'img/s':>6}"
    print(header + f" {'x PNG':>6} {'CPU/wall':>8} {'img/s/core':>10}")
    for label, data in encoded.items():
        median, worst = median_worst(times[label], higher_is_better=False)
        cores = sum(cpu[label]) / sum(times[label])  # above 1: the decoder used more cores
        print(
            f"{label:<26} {len(data) / 1e6:>5.2f} {median * 1e3:>13.1f} ({worst * 1e3:>6.1f})"
            f"{1 / median:>9.1f} {median / png:>6.2f} {cores:>8.2f}"
            f"{1 / float(np.median(cpu[label])):>11.1f}"
        )


if __name__ == "__main__":
    main()
