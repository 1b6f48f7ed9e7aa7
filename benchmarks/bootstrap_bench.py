"""Cost of the evaluation's 95% intervals: the vectorised cluster bootstrap against a loop that
calls scikit-learn once per resample.

    .venv/bin/python benchmarks/bootstrap_bench.py [--repeats 3]

Binary predictions of ``n`` test images (24, as the demo's test split; 1,000; 10,000) from
patients of 1-4 images. The vectorised path is ``metrics.metric_intervals`` (2,000 resamples:
every interval an evaluation writes, Wilson's included); the naive path draws the same kind of
resample and calls ``metrics.classification_metrics`` on the expanded sample, timed over 100
resamples and scaled to 2,000. One process, one BLAS thread; the figures are the median and the
worst of ``--repeats`` runs, and the ratio naive / vectorised measured in the same run.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time

import numpy as np
from seeds import median_worst

from fracture_train.metrics import classification_metrics, metric_intervals

CLASSES = ["not fractured", "fractured"]
RESAMPLES = 2000
NAIVE_RESAMPLES = 100


def predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, probabilities and patients (1-4 images each) of ``n`` test images."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, n)
    positive = np.clip(0.5 + (targets - 0.5) * 0.5 + rng.normal(0, 0.25, n), 0, 1)
    groups = np.repeat(np.arange(n), rng.integers(1, 5, n))[:n]
    return targets, np.stack([1 - positive, positive], axis=1), groups


def vectorised(targets: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
    start = time.perf_counter()
    metric_intervals(
        targets,
        probs,
        groups,
        CLASSES,
        positive=1,
        thresholds={"at_threshold": 0.5, "at_val_threshold": 0.3},
        resamples=RESAMPLES,
    )
    return time.perf_counter() - start


def naive(targets: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
    """The loop a first version would write, scaled to RESAMPLES."""
    rng = np.random.default_rng(0)
    units = np.unique(groups)
    members = [np.flatnonzero(groups == unit) for unit in units]
    start = time.perf_counter()
    for _ in range(NAIVE_RESAMPLES):
        drawn = np.concatenate([members[k] for k in rng.integers(0, len(units), len(units))])
        classification_metrics(
            targets[drawn], probs[drawn], CLASSES, positive=1, extra_threshold=0.3
        )
    return (time.perf_counter() - start) * RESAMPLES / NAIVE_RESAMPLES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each size")
    args = parser.parse_args()
    print(f"{'images':>7} {'vectorised s':>16} {'naive s':>16} {'naive / vectorised':>20}")
    for n in (24, 1_000, 10_000):
        fast, slow = [], []
        for repeat in range(args.repeats):
            data = predictions(n, seed=repeat)
            fast.append(vectorised(*data))
            slow.append(naive(*data))
        ratios = [s / f for s, f in zip(slow, fast, strict=True)]
        print(
            f"{n:>7,} {shown(fast, '.3f', higher_is_better=False):>16} "
            f"{shown(slow, '.2f', higher_is_better=False):>16} {shown(ratios, '.0f'):>20}"
        )


def shown(values: list[float], form: str, higher_is_better: bool = True) -> str:
    """``median (worst)``."""
    median, worst = median_worst(values, higher_is_better)
    return f"{median:{form}} ({worst:{form}})"


if __name__ == "__main__":
    main()
