"""Trained runs on new radiographs: ``train predict RUN... PATH...`` and the ``serve`` page.

Every file under the paths given is tried (the shared loader decides by content what is an
image, DICOM included) and decoded as each run was trained: its input size and its DICOM window.
Batches run on the GPU when there is one. Several runs make an ensemble that votes softly:
their probabilities are averaged. A file the loader cannot read is a row with its status and
reason, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fracture_curate.dataset_files import content_id
from fracture_curate.dicom import Window
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.images import ImageLoadError
from fracture_curate.manifest import atomic_path
from fracture_curate.model_input import Preprocessing, preprocess
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.runtime import (
    default_workers,
    model_threads,
    resolve_device,
    torch_threads,
    worker_init_fn,
)
from fracture_curate.schema import probability_column
from fracture_train.checkpoint import BEST, RunConfig, load_model, read_run_config
from fracture_train.decisions import DEFAULT_THRESHOLD, predict_labels
from fracture_train.engine import Placement, probabilities

if TYPE_CHECKING:
    from fracture_train.explain import Explainer

#: Images per forward pass.
PREDICT_BATCH = 32
#: Images per Grad-CAM pass (it keeps activations and gradients).
EXPLAIN_BATCH = 8
#: ``--out`` formats, by file suffix.
OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class Ensemble:
    """One or several trained runs of the same classes, loaded once, on one device."""

    runs: list[Path]
    models: list[nn.Module]
    configs: list[RunConfig]
    placements: list[Placement]

    @property
    def class_names(self) -> list[str]:
        return self.configs[0].class_names

    @property
    def positive_index(self) -> int | None:
        positive = self.configs[0].positive_class
        return None if positive is None else self.class_names.index(positive)

    @property
    def val_threshold(self) -> float | None:
        """A binary task's threshold chosen on validation: the run's own (an ensemble: the mean
        of its runs'); None for several classes or where a run has none."""
        chosen = [config.val_threshold for config in self.configs]
        if self.positive_index is None or any(value is None for value in chosen):
            return None
        return float(np.mean(chosen))

    @property
    def threshold(self) -> float:
        """The decision threshold predictions are made at: the validation one, else 0.5."""
        chosen = self.val_threshold
        return DEFAULT_THRESHOLD if chosen is None else chosen

    @property
    def preprocessings(self) -> list[Preprocessing]:
        """The distinct ways its runs decode a file, in run order."""
        return list(dict.fromkeys(config.preprocessing for config in self.configs))


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder ``train`` wrote (it holds a run ``config.json``)."""
    try:
        read_run_config(path)
    except CurateError:
        return False
    return True


def split_arguments(arguments: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """``train predict RUN... PATH...``: the leading run folders, then the files and folders to
    predict; a ConfigError when either is missing."""
    arguments = [Path(argument) for argument in arguments]
    count = 0
    while count < len(arguments) and is_run_folder(arguments[count]):
        count += 1
    if count == 0:
        first = arguments[0] if arguments else "nothing"
        raise ConfigError(
            f"the first argument must be a run folder written by `train`; got {first}"
        )
    if count == len(arguments):
        raise ConfigError("name the files or folders to predict after the run folder(s)")
    return arguments[:count], arguments[count:]


def load_ensemble(
    runs: Sequence[str | Path],
    *,
    device: str = "auto",
    checkpoint: str = BEST,
    factory: str | None = None,
) -> Ensemble:
    """Load every run's model on one device; runs of other classes than the first are refused."""
    if not runs:
        raise ConfigError("name at least one run folder")
    torch_device = resolve_device(device)
    models, configs, placements = [], [], []
    for run in runs:
        model, config = load_model(run, checkpoint, factory=factory)
        if configs and (config.class_names, config.positive_class) != (
            configs[0].class_names,
            configs[0].positive_class,
        ):
            raise ConfigError(
                f"{run} predicts {config.class_names}, {runs[0]} {configs[0].class_names}: an "
                "ensemble needs runs of the same classes"
            )
        placement = Placement.create(
            torch_device, config.preprocessing, amp=False, channels_last=True
        )
        models.append(placement.prepare(model).eval())
        configs.append(config)
        placements.append(placement)
    return Ensemble([Path(run) for run in runs], models, configs, placements)


def find_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, and every file under the folders named (sorted, hidden ones skipped);
    a ConfigError for a path that does not exist."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(
                file
                for file in path.rglob("*")
                if file.is_file() and not any(part.startswith(".") for part in file.parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    return list(dict.fromkeys(found))


class DecodedFiles(Dataset):
    """Each file decoded once per way the ensemble's runs decode: (index, arrays, failure)."""

    def __init__(self, sources: Sequence[Path | bytes], preprocessings: list[Preprocessing]):
        self.sources, self.preprocessings = sources, preprocessings

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, str | None, list[np.ndarray], tuple | None]:
        source = self.sources[index]
        try:
            data = source if isinstance(source, bytes) else _read(source)
            image_id = content_id(data)
            arrays = [decode(data, preprocessing) for preprocessing in self.preprocessings]
        except ImageLoadError as error:
            return index, None, [], (error.status, error.reason)
        return index, image_id, arrays, None


def decode(data: bytes, preprocessing: Preprocessing) -> np.ndarray:
    """A file's bytes as a run sees them: H x W x 3 uint8 at its size, DICOM in its window."""
    window = Window.parse(preprocessing.window)
    return preprocess(data, preprocessing.image_size, preprocessing.resize, window)


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer for some inputs, in order: probabilities where the input decoded."""

    image_ids: list[str | None]
    probs: np.ndarray  #: N x K; NaN rows for inputs that failed
    failures: dict[int, tuple[str, str]]  #: input index -> (status, reason)
    images: dict[int, list[np.ndarray]]  #: input index -> its decoded arrays (when kept)


def predict_sources(
    ensemble: Ensemble,
    sources: Sequence[Path | bytes],
    *,
    batch_size: int = PREDICT_BATCH,
    workers: int | None = None,
    keep_images: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Prediction:
    """Score files (paths, or their bytes) with every run of the ensemble and average.

    ``keep_images`` keeps each input's decoded arrays (one per preprocessing), for
    explanations. Progress is reported in a phase "predicting".
    """
    preprocessings = ensemble.preprocessings
    on_cuda = ensemble.placements[0].device.type == "cuda"
    workers = default_workers(on_cuda) if workers is None else workers
    loader = DataLoader(
        DecodedFiles(sources, preprocessings),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=worker_init_fn() if workers else None,
    )
    phase = Phase(on_progress, "predicting", len(sources))
    probs = np.full((len(sources), len(ensemble.class_names)), math.nan)
    image_ids: list[str | None] = [None] * len(sources)
    failures: dict[int, tuple[str, str]] = {}
    kept: dict[int, list[np.ndarray]] = {}
    with torch_threads(model_threads(on_cuda, workers)):
        for batch in loader:
            loaded = [item for item in batch if item[3] is None]
            failures.update({index: failure for index, _, _, failure in batch if failure})
            if loaded:
                indices = [index for index, _, _, _ in loaded]
                probs[indices] = _score(ensemble, [arrays for _, _, arrays, _ in loaded])
                for index, image_id, arrays, _ in loaded:
                    image_ids[index] = image_id
                    if keep_images:
                        kept[index] = arrays
            phase.advance(len(batch))
    return Prediction(image_ids, probs, failures, kept)


@torch.inference_mode()
def _score(ensemble: Ensemble, arrays: list[list[np.ndarray]]) -> np.ndarray:
    """The mean of the runs' class probabilities of one batch of decoded inputs."""
    total = 0.0
    for model, config, placement in zip(
        ensemble.models, ensemble.configs, ensemble.placements, strict=True
    ):
        which = ensemble.preprocessings.index(config.preprocessing)
        batch = torch.from_numpy(np.stack([item[which] for item in arrays])).permute(0, 3, 1, 2)
        total = total + probabilities(model(placement.inputs(batch))).double().cpu().numpy()
    return total / len(ensemble.models)


def prediction_table(
    ensemble: Ensemble, names: Sequence[str], prediction: Prediction
) -> pd.DataFrame:
    """One row per input: ``path``, ``image_id``, ``status``, ``reason``, a probability per
    class, ``predicted_label`` at the run's threshold, ``predicted_label_at_0.5`` and
    ``threshold`` (binary tasks; NaN for several classes, which take the most probable)."""
    positive = ensemble.positive_index
    ok = ~np.isnan(prediction.probs).any(axis=1)
    frame = pd.DataFrame(
        {
            "path": list(names),
            "image_id": pd.array(prediction.image_ids, dtype="string"),
            "status": pd.array(np.where(ok, "ok", None), dtype="string"),
            "reason": pd.array([None] * len(names), dtype="string"),
        }
    )
    for index, (status, reason) in prediction.failures.items():
        frame.loc[index, ["status", "reason"]] = [status, reason]
    for column, name in enumerate(ensemble.class_names):
        frame[probability_column(name)] = prediction.probs[:, column]
    names_array = np.asarray(ensemble.class_names, dtype=object)
    threshold = ensemble.threshold if positive is not None else math.nan
    chosen = np.full(len(frame), None, dtype=object)
    at_half = np.full(len(frame), None, dtype=object)
    if ok.any():
        probs = prediction.probs[ok]
        at = threshold if positive is not None else DEFAULT_THRESHOLD
        chosen[ok] = names_array[predict_labels(probs, positive, at)]
        at_half[ok] = names_array[predict_labels(probs, positive, DEFAULT_THRESHOLD)]
    frame["predicted_label"] = pd.array(chosen, dtype="string")
    frame["predicted_label_at_0.5"] = pd.array(at_half, dtype="string")
    frame["threshold"] = threshold
    return frame


def predict_files(
    ensemble: Ensemble,
    paths: Sequence[str | Path],
    *,
    batch_size: int = PREDICT_BATCH,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, Prediction]:
    """The prediction table of every file under ``paths`` (see :func:`prediction_table`), and
    the prediction it was made from, with the decoded images kept for explanations."""
    files = find_files(paths)
    if not files:
        raise ConfigError(f"no file under {', '.join(map(str, paths))}")
    prediction = predict_sources(
        ensemble,
        files,
        batch_size=batch_size,
        workers=workers,
        keep_images=True,
        on_progress=on_progress,
    )
    return prediction_table(ensemble, [str(file) for file in files], prediction), prediction


def write_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the prediction table as CSV or Parquet (by the suffix), atomically."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {path}: name a .csv or .parquet file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        if path.suffix.lower() == ".csv":
            frame.to_csv(temp, index=False)
        else:
            frame.to_parquet(temp, index=False)
    return path


def predicted_classes(ensemble: Ensemble, probs: np.ndarray) -> np.ndarray:
    """The class index each row of ``probs`` is predicted as, at the ensemble's threshold."""
    return predict_labels(probs, ensemble.positive_index, ensemble.threshold)


def explainers(ensemble: Ensemble) -> list[Explainer]:
    """A Grad-CAM explainer per run of the ensemble (eager fp32 copies of its models)."""
    from fracture_train.explain import Explainer

    return [
        Explainer(model, config, placement.device)
        for model, config, placement in zip(
            ensemble.models, ensemble.configs, ensemble.placements, strict=True
        )
    ]


def ensemble_heatmaps(
    ensemble: Ensemble,
    explaining: list[Explainer],
    arrays: list[list[np.ndarray]],
    classes: Sequence[int],
) -> np.ndarray:
    """N x H x W Grad-CAM maps of the inputs' decoded ``arrays`` (as :class:`Prediction` keeps
    them), each explaining its class in ``classes``: the mean of the runs' maps, at the size
    of the first run's input."""
    first = ensemble.configs[0].preprocessing
    side = first.image_size
    total = np.zeros((len(arrays), side, side), dtype=np.float32)
    for explainer, config in zip(explaining, ensemble.configs, strict=True):
        which = ensemble.preprocessings.index(config.preprocessing)
        maps = explainer.heatmaps(np.stack([item[which] for item in arrays]), classes)
        for index, heatmap in enumerate(maps):
            total[index] += cv2.resize(heatmap, (side, side), interpolation=cv2.INTER_LINEAR)
    return total / len(explaining)


def write_explanations(
    ensemble: Ensemble,
    frame: pd.DataFrame,
    prediction: Prediction,
    folder: str | Path,
    *,
    batch_size: int = EXPLAIN_BATCH,
    on_progress: ProgressCallback | None = None,
) -> pd.Series:
    """For each file that was read, the image the first run saw beside its Grad-CAM overlay of
    the predicted class, as ``folder/<file name>-<image id>.png``; the paths written (null for
    the rows that failed). Progress is reported in a phase "explaining"."""
    from fracture_train.explain import side_by_side

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    readable = sorted(prediction.images)
    classes = predicted_classes(ensemble, prediction.probs[readable]) if readable else []
    explaining = explainers(ensemble)
    written = pd.Series(pd.NA, index=frame.index, dtype="string")
    phase = Phase(on_progress, "explaining", len(readable))
    for start in range(0, len(readable), batch_size):
        chosen = readable[start : start + batch_size]
        arrays = [prediction.images[index] for index in chosen]
        maps = ensemble_heatmaps(ensemble, explaining, arrays, classes[start : start + batch_size])
        for index, items, heatmap in zip(chosen, arrays, maps, strict=True):
            name = f"{Path(frame.loc[index, 'path']).stem}-{frame.loc[index, 'image_id'][:12]}.png"
            with atomic_path(folder / name) as temp:
                side_by_side(items[0], heatmap).save(temp, format="PNG")
            written[index] = str(folder / name)
        phase.advance(len(chosen))
    return written


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageLoadError(
            "unreadable", f"cannot read file: {error.strerror or error}"
        ) from error
