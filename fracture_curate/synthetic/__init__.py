"""Synthetic radiograph-like datasets with planted problems, whose every file is on record.

For the tests, the demo (``curate synth``) and the quality benchmarks of the duplicate and
outlier detectors: :func:`generate_dataset` writes phantoms in one of the folder layouts that
scan reads, plants copies, outliers and broken files among them, and records every file written
in ``planted.csv``; :func:`planted_vs_found` then says how many of each planted kind a run found.
"""

from fracture_curate.synthetic.dataset import generate_dataset
from fracture_curate.synthetic.drawing import FRACTURE_KINDS, draw_outlier, draw_phantom
from fracture_curate.synthetic.record import (
    DUPLICATE_KINDS,
    LABELS_CSV,
    PLANTED_CSV,
    PLANTED_KINDS,
    RECORD_COLUMNS,
    planted_vs_found,
    read_record,
    source_families,
)
from fracture_curate.synthetic.writer import GENERATED_LAYOUTS

__all__ = [
    "DUPLICATE_KINDS",
    "FRACTURE_KINDS",
    "GENERATED_LAYOUTS",
    "LABELS_CSV",
    "PLANTED_CSV",
    "PLANTED_KINDS",
    "RECORD_COLUMNS",
    "draw_outlier",
    "draw_phantom",
    "generate_dataset",
    "planted_vs_found",
    "read_record",
    "source_families",
]
