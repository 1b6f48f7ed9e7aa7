"""Evaluation of a trained model: predictions, metrics and their figures.

Used at the end of training (val and test) and by ``train evaluate`` on another curated set
(cross-dataset evaluation), so both write the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from fracture_curate.dataset_files import shown_path
from fracture_curate.dicom import Window
from fracture_curate.errors import ConfigError
from fracture_curate.manifest import folder_lock, write_manifest
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.runtime import model_threads, torch_threads
from fracture_curate.schema import (
    METRICS_FILE,
    PREDICT_STAGE,
    PREDICTION_COLUMNS,
    PREDICTIONS_FILE,
    SPLITS,
    probability_column,
)
from fracture_train.checkpoint import BEST, CHECKPOINTS, write_json
from fracture_train.config import Uncertainty
from fracture_train.data import (
    ImageDataset,
    ImageStore,
    fill_workers,
    loader_workers,
    make_loader,
)
from fracture_train.decisions import DEFAULT_THRESHOLD, predict_labels
from fracture_train.distributed import current, gather_predictions
from fracture_train.engine import Placement, predict
from fracture_train.metrics import classification_metrics
from fracture_train.plots import plot_confusion, plot_roc
from fracture_train.predict import load_ensemble
from fracture_train.rows import Rows, load_evaluation_rows
from fracture_train.samples import plot_samples, select_samples


@dataclass(frozen=True)
class SplitPredictions:
    """A model's class probabilities for some rows of a table."""

    name: str  #: "val", "test", or "all" for a whole external set
    positions: np.ndarray  #: row positions in ``Rows.frame``
    probs: np.ndarray  #: N x K, in class order
    targets: np.ndarray
    loss: float


@dataclass(frozen=True)
class Studies:
    """Predictions per study: one row per study, in order of first appearance."""

    probs: np.ndarray  #: S x K
    targets: np.ndarray
    groups: np.ndarray  #: each study's independent group (its patient's)
    images: int  #: the images they hold


@dataclass(frozen=True)
class EvaluationResult:
    """What ``train evaluate`` wrote and measured."""

    out: Path
    metrics: dict[str, Any]


def predict_splits(
    model: nn.Module,
    rows: Rows,
    store: ImageStore,
    placement: Placement,
    splits: dict[str, np.ndarray],
    *,
    batch_size: int,
    workers: int,
    phase: Phase | None = None,
) -> list[SplitPredictions]:
    """Probabilities of ``model`` for each named group of row positions; ``phase`` advances by
    the images predicted.

    In a process group (a torchrun), each process predicts its share of each group and every
    process gets the whole group's predictions back, in order, as one process would make them.
    """
    targets = rows.frame["target"].to_numpy()
    world = current()
    results = []
    for name, positions in splits.items():
        share = world.shard(len(positions))
        loader = make_loader(
            ImageDataset(store, positions[share], targets[positions[share]]),
            batch_size=batch_size,
            workers=workers,
            pin_memory=placement.device.type == "cuda",
        )
        probs, split_targets, loss = predict(model, loader, placement, phase)
        probs, split_targets, loss = gather_predictions(share, probs, split_targets, loss)
        results.append(SplitPredictions(name, positions, probs, split_targets, loss))
    return results


def write_evaluation(
    out: Path,
    rows: Rows,
    results: list[SplitPredictions],
    *,
    val_threshold: float | None,
    header: dict[str, Any],
    provenance: dict[str, Any],
    store: ImageStore,
    uncertainty: Uncertainty = Uncertainty(),
) -> dict[str, Any]:
    """Metrics per split (with intervals, and per study where the rows have study ids), the
    predictions, confusion and ROC figures, and for every split but val its sample predictions
    (listed in the metrics, drawn from ``store``), written to ``out``; returns the metrics."""
    positive = rows.positive_index
    metrics = header | {
        "classes": rows.class_names,
        "positive_class": rows.positive_class,
        "decision_threshold": DEFAULT_THRESHOLD,
        "val_threshold": val_threshold,
    }
    for result in results:
        frame = rows.frame.iloc[result.positions]
        metrics[result.name] = classification_metrics(
            result.targets,
            result.probs,
            rows.class_names,
            positive=positive,
            extra_threshold=val_threshold,
            groups=independent_units(frame),
            resamples=uncertainty.bootstrap,
        ) | {"loss": result.loss}
        studies = per_study(frame, result.probs, positive, uncertainty.study_aggregate)
        if studies is not None:
            metrics[result.name]["per_study"] = classification_metrics(
                studies.targets,
                studies.probs,
                rows.class_names,
                positive=positive,
                extra_threshold=val_threshold,
                groups=studies.groups,
                resamples=uncertainty.bootstrap,
            ) | {"images": studies.images, "aggregate": uncertainty.study_aggregate}
    samples = {
        result.name: select_samples(
            rows.frame.iloc[result.positions],
            result.probs,
            predict_labels(result.probs, positive),
            rows.class_names,
        )
        for result in results
        if result.name != "val"
    }
    for name, chosen in samples.items():
        metrics[name]["samples"] = chosen.drop(columns="position").to_dict("records")
    # The numbers first: a figure that cannot be drawn must not cost them.
    write_manifest(
        pd.concat([_predictions(rows, r, val_threshold) for r in results], ignore_index=True),
        out / PREDICTIONS_FILE,
        stage=PREDICT_STAGE,
        params=provenance,
    )
    write_json(out / METRICS_FILE, metrics)
    thresholds = {"decision": DEFAULT_THRESHOLD}
    if val_threshold is not None:
        thresholds["val-chosen"] = val_threshold
    for result in results:
        plot_confusion(
            metrics[result.name]["confusion_matrix"],
            rows.class_names,
            out / f"confusion_{result.name}.png",
            f"Confusion matrix ({result.name}, n={len(result.targets)})",
        )
        plot_roc(
            result.targets,
            result.probs,
            rows.class_names,
            positive,
            out / f"roc_{result.name}.png",
            f"ROC ({result.name})",
            thresholds if positive is not None else None,
        )
    for result in results:
        if result.name in samples:
            chosen = samples[result.name]
            plot_samples(
                chosen,
                [store[result.positions[position]] for position in chosen["position"]],
                rows.class_names,
                out / f"samples_{result.name}.png",
                f"Most confident correct and wrong predictions ({result.name})",
            )
    return metrics


def independent_units(frame: pd.DataFrame) -> np.ndarray:
    """The unit a bootstrap resamples for each row: its split group (a patient, with the copies
    and related films joined to it), or the image itself where the manifest gives none."""
    groups = frame["group_id"].astype("string")
    return ("group " + groups).fillna("image " + frame["image_id"].astype(str)).to_numpy(str)


def per_study(
    frame: pd.DataFrame, probs: np.ndarray, positive: int | None, aggregate: str
) -> Studies | None:
    """Image predictions made study predictions, as MURA is scored: a study's probabilities are
    its images' mean (``aggregate`` "mean") or those of its most suspicious image ("max": the
    highest positive-class probability; for several classes, the highest top probability). A
    study is positive when any of its images is (binary), else of its most frequent label. Rows
    without a study id are studies of one image; None when no row has one."""
    if frame["study_id"].isna().all():
        return None
    keys = ("study " + frame["study_id"].astype("string")).fillna(
        "image " + frame["image_id"].astype(str)
    )
    codes, uniques = pd.factorize(keys.to_numpy(str))
    n_studies, n_classes = len(uniques), probs.shape[1]
    targets = frame["target"].to_numpy()
    if aggregate == "mean":
        sums = np.zeros((n_studies, n_classes))
        np.add.at(sums, codes, probs)
        study_probs = sums / np.bincount(codes, minlength=n_studies)[:, None]
    else:
        suspicion = probs[:, positive] if positive is not None else probs.max(axis=1)
        order = np.lexsort((-suspicion, codes))  # by study, most suspicious first
        study_probs = probs[order[np.r_[True, np.diff(codes[order]) != 0]]]
    votes = np.zeros((n_studies, n_classes), dtype=np.int64)
    np.add.at(votes, (codes, targets), 1)
    if positive is not None:
        study_targets = np.where(votes[:, positive] > 0, positive, 1 - positive)
    else:
        study_targets = votes.argmax(axis=1)
    units = independent_units(frame)
    first_row = np.unique(codes, return_index=True)[1]
    return Studies(study_probs, study_targets, units[first_row], len(frame))


def _predictions(rows: Rows, result: SplitPredictions, val_threshold: float | None) -> pd.DataFrame:
    names = np.asarray(rows.class_names, dtype=object)
    frame = rows.frame.iloc[result.positions][
        ["image_id", "path", "split", "label", "group_id", "study_id"]
    ]
    frame = frame.reset_index(drop=True)
    frame["predicted_label"] = names[predict_labels(result.probs, rows.positive_index)]
    if rows.positive_index is not None and val_threshold is not None:
        chosen = predict_labels(result.probs, rows.positive_index, val_threshold)
        frame["predicted_label_val_threshold"] = names[chosen]
    frame = frame.astype({name: PREDICTION_COLUMNS[name] for name in frame.columns})
    for index, name in enumerate(rows.class_names):
        frame[probability_column(name)] = result.probs[:, index]
    return frame


def evaluate_run(
    run_dir: str | Path | Sequence[str | Path],
    manifest: str | Path,
    *,
    root: str | Path | None = None,
    split: str | None = None,
    checkpoint: str = BEST,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    cache: str = "memory",
    model: str | None = None,
    show_paths: bool = False,
    uncertainty: Uncertainty = Uncertainty(),
    on_progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Evaluate a run's model, or an ensemble of runs, on a curated manifest (all rows with a
    split, or one split).

    Writes the evaluation to ``out`` (default ``RUN/evaluations/<dataset folder>-<split>``, of
    the first run, ``-ensemble`` added for several). Binary metrics are at 0.5 and at the
    threshold the run chose on its own validation set (an ensemble: the mean of its runs',
    which average their probabilities). Each run decodes DICOM files with the window it was
    trained with. ``model`` names the ``package.module:factory`` a run was trained with, when
    it was one: a run folder never imports code on its own. ``uncertainty`` sets the intervals
    and the study scoring.
    """
    if split not in (None, *SPLITS):
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}, or all")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; choose {' or '.join(CHECKPOINTS)}")
    runs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(run) for run in run_dir]
    ensemble = load_ensemble(runs, device=device, checkpoint=checkpoint, factory=model)
    first = ensemble.configs[0]
    rows = load_evaluation_rows(
        manifest, first.class_names, first.positive_class, root=root, split=split
    )
    name = split or "all"
    folder = f"{rows.root.name}-{name}" + ("-ensemble" if len(runs) > 1 else "")
    out = Path(out) if out is not None else runs[0] / "evaluations" / folder
    on_cuda = ensemble.placements[0].device.type == "cuda"
    with folder_lock(out, "evaluation folder"):
        stores = {}
        for preprocessing in ensemble.preprocessings:  # as each model was trained
            window = Window.parse(preprocessing.window)
            stores[preprocessing] = ImageStore(
                rows.files(window),
                preprocessing.image_size,
                cache,
                out / "cache",
            )
            stores[preprocessing].fill(fill_workers(workers), on_progress)
        loaders = loader_workers(workers, on_cuda, cache)
        members = []
        with torch_threads(model_threads(on_cuda, loaders)):
            for network, config, placement in zip(
                ensemble.models, ensemble.configs, ensemble.placements, strict=True
            ):
                members += predict_splits(
                    network,
                    rows,
                    stores[config.preprocessing],
                    placement,
                    {name: np.arange(len(rows.frame))},
                    batch_size=batch_size,
                    workers=loaders,
                    phase=Phase(on_progress, "evaluating", len(rows.frame)),
                )
        result = SplitPredictions(
            name,
            members[0].positions,
            np.mean([member.probs for member in members], axis=0),
            members[0].targets,
            float(np.mean([member.loss for member in members])),
        )
        header = {
            "run": shown_path(runs[0], show_paths),
            "runs": [shown_path(run, show_paths) for run in runs],
            "checkpoint": checkpoint,
            "model": " + ".join(config.model for config in ensemble.configs),
            "manifest": shown_path(manifest, show_paths),
            "root": shown_path(rows.root, show_paths),
            "window": ", ".join(dict.fromkeys(p.window for p in ensemble.preprocessings)),
            "label_map": rows.label_map,
        }
        metrics = write_evaluation(
            out,
            rows,
            [result],
            val_threshold=ensemble.val_threshold,
            header=header,
            provenance=header,
            store=stores[first.preprocessing],
            uncertainty=uncertainty,
        )
    return EvaluationResult(out=out, metrics=metrics)
