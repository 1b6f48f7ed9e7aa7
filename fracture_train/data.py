"""The trainer's input: a checked split manifest, decoded images, augmentation and loaders.

Images go through the project's shared loader and are resized (stretched, so nothing is cut off a
radiograph) to a square of ``image_size``. They travel as uint8 and are normalised on the device.
Decoding can cost more than the model, so decoded images can be cached once, in memory or on
disk (one ``.npy`` per image, keyed by image id and size, reusable across runs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from fracture_curate.embed import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, collate, preprocess
from fracture_curate.images import ImageLoadError
from fracture_curate.manifest import atomic_path, read_manifest, read_provenance
from fracture_curate.runtime import default_workers, worker_init_fn

REQUIRED_COLUMNS = ("image_id", "path", "label", "split", "status")
SPLITS = ("train", "val", "test")
CACHE_MODES = ("memory", "disk", "none")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")
#: Share of the machine's memory that ``--cache memory`` may take.
MEMORY_CACHE_SHARE = 0.5

_POSITIVE = re.compile(r"fractur|positive|abnormal", re.IGNORECASE)
_NEGATED = re.compile(r"not|non", re.IGNORECASE)


class DataError(ValueError):
    """A manifest or image set the trainer cannot use; the message says what to fix."""


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input; saved with every checkpoint."""

    image_size: int
    resize: str = "stretch"  #: the whole image resized to a square, nothing cut off
    mean: tuple[float, float, float] = IMAGENET_MEAN  #: of RGB in [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class Rows:
    """The usable rows of a manifest: ``image_id, path, label, split, target`` (class index)."""

    frame: pd.DataFrame
    root: Path
    class_names: list[str]
    positive_class: str | None  #: the fracture class of a binary task; None for several classes
    label_map: dict[str, str] = field(default_factory=dict)  #: manifest label -> model class

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class (binary tasks), else None."""
        return None if self.positive_class is None else self.class_names.index(self.positive_class)

    def split(self, name: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.frame["split"].to_numpy() == name)


def looks_positive(name: str) -> bool:
    """Whether a class name reads as a finding: fracture, positive, abnormal (and not negated)."""
    return bool(_POSITIVE.search(name)) and not _NEGATED.search(name)


def class_order(labels: Sequence[str]) -> tuple[list[str], str | None]:
    """Class names in model order, and the positive class when there are exactly two.

    Binary order is ``[negative, positive]``: the positive class is the one that looks like a
    fracture, else the second in sorted order. Several classes are sorted.
    """
    names = sorted(set(labels))
    if len(names) != 2:
        return names, None
    looking = [name for name in names if looks_positive(name)]
    positive = looking[0] if len(looking) == 1 else names[1]
    return [name for name in names if name != positive] + [positive], positive


def load_training_rows(manifest: str | Path, root: str | Path | None = None) -> Rows:
    """Check a split manifest for training and return its rows.

    Needs train, val and test rows, every class in train, both classes in val for a binary
    task (the threshold and AUROC are chosen there), and every image file present.
    """
    frame, root = _read_usable(manifest, root)
    counts = frame.groupby(["split", "label"]).size()
    for split in SPLITS:
        if split not in counts.index.get_level_values("split"):
            raise DataError(
                f"{manifest} has no {split} rows; the trainer needs train, val and test splits"
            )
    train_labels = set(counts["train"].index)
    absent = sorted(set(frame["label"]) - train_labels)
    if absent:
        raise DataError(
            f"class(es) {', '.join(map(repr, absent))} have no train rows in {manifest}"
        )
    if len(train_labels) < 2:
        raise DataError(f"{manifest} has a single class ({next(iter(train_labels))!r}) in train")
    class_names, positive = class_order(list(train_labels))
    if positive is not None and len(counts["val"]) < 2:
        raise DataError(
            f"the val split of {manifest} has only {counts['val'].index[0]!r}; a binary task "
            "needs both classes in val to choose the checkpoint and the threshold"
        )
    _check_files(frame, root)
    return _rows(frame, root, class_names, positive, {})


def load_evaluation_rows(
    manifest: str | Path,
    class_names: list[str],
    positive_class: str | None,
    *,
    root: str | Path | None = None,
    split: str | None = None,
) -> Rows:
    """Check a curated manifest for evaluating a trained model; ``split`` None takes every split.

    Labels must be the model's classes; for a binary model, two labels that read as one finding
    and one normal (``positive``/``negative``, ``abnormal``/``normal``) are mapped onto its
    classes, so a model trained on one dataset can be evaluated on another.
    """
    frame, root = _read_usable(manifest, root)
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise DataError(f"{manifest} has no {split} rows")
    labels = sorted(set(frame["label"]))
    label_map = {label: label for label in labels}
    unknown = [label for label in labels if label not in class_names]
    if unknown:
        label_map = _binary_label_map(labels, class_names, positive_class)
        if not label_map:
            raise DataError(
                f"{manifest} has label(s) {', '.join(map(repr, unknown))} that the model does not "
                f"know; its classes are {', '.join(map(repr, class_names))}"
            )
        frame = frame.assign(label=frame["label"].map(label_map))
    _check_files(frame, root)
    mapped = {key: value for key, value in label_map.items() if key != value}
    return _rows(frame, root, class_names, positive_class, mapped)


def _read_usable(manifest: str | Path, root: str | Path | None) -> tuple[pd.DataFrame, Path]:
    """The rows with a split, checked for columns, status, labels; and the dataset folder."""
    frame = read_manifest(manifest, stage="split")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{manifest} lacks column(s) {', '.join(missing)}; is it written by `curate split`?"
        )
    frame = frame[frame["split"].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{manifest} has no rows with a split")
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise DataError(f"{manifest} has unknown split value(s): {', '.join(map(repr, unknown))}")
    unusable = frame[frame["status"] != "ok"]
    if len(unusable):
        first = unusable.iloc[0]
        raise DataError(
            f"{len(unusable)} row(s) of {manifest} have a split but status other than 'ok', "
            f"e.g. {first['path']} ({first['status']})"
        )
    if frame["label"].isna().any():
        first = frame[frame["label"].isna()].iloc[0]
        raise DataError(
            f"{int(frame['label'].isna().sum())} row(s) of {manifest} with a split have no "
            f"label, e.g. {first['path']}"
        )
    if root is None:
        root = read_provenance(manifest).get("params", {}).get("root")
        if root is None:
            raise DataError(f"{manifest} does not record its dataset folder; pass --root")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} (from the manifest) is missing; pass --root")
    columns = ["image_id", "path", "label", "split"]
    return frame[columns].astype({"label": str, "split": str}), root


def _check_files(frame: pd.DataFrame, root: Path) -> None:
    missing = [path for path in frame["path"] if not (root / path).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) listed in the manifest no longer exist under {root}, "
            f"e.g. {missing[0]}; re-run `curate scan` or pass --root"
        )


def _binary_label_map(
    labels: list[str], class_names: list[str], positive_class: str | None
) -> dict[str, str]:
    """Map two finding/normal labels onto a binary model's classes; empty when that fails."""
    if positive_class is None or len(labels) != 2:
        return {}
    positives = [label for label in labels if looks_positive(label)]
    if len(positives) != 1:
        return {}
    negative_class = next(name for name in class_names if name != positive_class)
    return {label: positive_class if label in positives else negative_class for label in labels}


def _rows(
    frame: pd.DataFrame,
    root: Path,
    class_names: list[str],
    positive: str | None,
    label_map: dict[str, str],
) -> Rows:
    index = {name: i for i, name in enumerate(class_names)}
    frame = frame.reset_index(drop=True).assign(target=frame["label"].map(index).to_numpy())
    return Rows(frame, root, class_names, positive, label_map)


class ImageStore:
    """Decoded, resized H x W x 3 uint8 images of a table's rows, by row position.

    ``cache`` "none" decodes on every access; "memory" decodes every image once into one array;
    "disk" keeps one ``.npy`` per image under ``cache_dir/<size>px/<image_id>.npy``.
    """

    def __init__(
        self,
        paths: list[Path],
        image_ids: list[str],
        image_size: int,
        cache: str = "memory",
        cache_dir: Path | None = None,
    ) -> None:
        if cache not in CACHE_MODES:
            raise DataError(f"unknown cache {cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if cache == "disk" and cache_dir is None:
            raise DataError("--cache disk needs a cache folder")
        self.paths, self.image_ids, self.image_size, self.cache = (
            paths,
            image_ids,
            image_size,
            cache,
        )
        unique = list(dict.fromkeys(image_ids))
        slots = {image_id: position for position, image_id in enumerate(unique)}
        self.slot = np.array([slots[image_id] for image_id in image_ids], dtype=np.int64)
        self.folder = Path(cache_dir) / f"{image_size}px" if cache == "disk" else None
        self.array: np.ndarray | None = None
        if cache == "memory":
            needed = len(unique) * image_size * image_size * 3
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            if needed > MEMORY_CACHE_SHARE * available:
                raise DataError(
                    f"--cache memory needs {needed / 2**30:.1f} GiB for {len(unique)} images at "
                    f"{image_size}px, more than half this machine's memory; use --cache disk"
                )
            self.array = np.zeros((len(unique), image_size, image_size, 3), dtype=np.uint8)
        self.filled = cache == "none"

    def __len__(self) -> int:
        return len(self.paths)

    def missing(self) -> list[int]:
        """Row positions to decode to fill the cache: one per image id not cached yet."""
        if self.filled:
            return []
        first: dict[int, int] = {}
        for position, slot in enumerate(self.slot):
            first.setdefault(int(slot), position)
        return [
            position
            for position in first.values()
            if self.folder is None or not self._disk_path(position).exists()
        ]

    def fill(self, workers: int, on_batch: Callable[[int], None] | None = None) -> int:
        """Decode the images the cache lacks (in ``workers`` processes); returns how many.

        A file that fails to decode is an error here, before any training starts.
        """
        todo = self.missing()
        loader = DataLoader(
            ImageFiles([self.paths[p] for p in todo], self.image_size, "stretch"),
            batch_size=32,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=worker_init_fn(),
        )
        failures: dict[int, str] = {}
        for batch in loader:
            failures.update(batch["failures"])
            if batch["images"] is not None:
                images = batch["images"].permute(0, 2, 3, 1).numpy()
                for index, image in zip(batch["indices"], images, strict=True):
                    self._store(todo[index], image)
            if on_batch is not None:
                on_batch(len(batch["indices"]) + len(batch["failures"]))
        if failures:
            index, reason = next(iter(failures.items()))
            raise DataError(
                f"{len(failures)} image(s) could not be decoded, e.g. {self.paths[todo[index]]}: "
                f"{reason}"
            )
        self.filled = True
        return len(todo)

    def __getitem__(self, position: int) -> np.ndarray:
        if self.array is not None:
            return self.array[self.slot[position]]
        if self.folder is not None:
            return np.load(self._disk_path(position))
        try:
            return preprocess(self.paths[position], self.image_size, "stretch")
        except ImageLoadError as error:
            raise DataError(f"{self.paths[position]}: {error.reason}") from error

    def _disk_path(self, position: int) -> Path:
        return self.folder / f"{self.image_ids[position]}.npy"

    def _store(self, position: int, image: np.ndarray) -> None:
        if self.array is not None:
            self.array[self.slot[position]] = image
            return
        with atomic_path(self._disk_path(position)) as temp, open(temp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(image))


def loader_workers(requested: int | None, on_cuda: bool, cache: str) -> int:
    """Loader processes: ``requested``, else the project's default on CUDA or without a cache.

    On a CPU with a cache, augmentation is cheap next to the model, and a loader process would
    take cores from the model's threads: the main process does it (0 workers).
    """
    if requested is not None:
        return requested
    return default_workers(on_cuda) if on_cuda or cache == "none" else 0


def fill_workers(requested: int | None) -> int:
    """Decoding processes for filling a cache: ``requested``, else every core (nothing else
    runs meanwhile)."""
    return requested if requested is not None else os.cpu_count() or 1


class ImageDataset(Dataset):
    """(3 x H x W uint8 image, class index) pairs of some rows of a store, augmented or not."""

    def __init__(
        self,
        store: ImageStore,
        positions: np.ndarray,
        targets: np.ndarray,
        transform: v2.Transform | None = None,
    ) -> None:
        self.store, self.positions, self.targets, self.transform = (
            store,
            positions,
            targets,
            transform,
        )

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.store[int(self.positions[index])]).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def augmentation(preset: str, image_size: int) -> v2.Transform | None:
    """The training augmentation of a preset, on uint8 tensors (None for "none").

    light: flips, small rotations, brightness/contrast. standard: plus random resized crops.
    strong: stronger crops, vertical flips, zoom/shift and rotation, stronger brightness/contrast.
    """
    if preset not in AUGMENT_PRESETS:
        raise DataError(f"unknown augmentation {preset!r}; choose one of {AUGMENT_PRESETS}")
    if preset == "none":
        return None
    if preset == "light":
        steps = [v2.RandomHorizontalFlip(), v2.RandomRotation(10), v2.ColorJitter(0.1, 0.1)]
    elif preset == "standard":
        steps = [
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(0.2, 0.2),
        ]
    else:
        steps = [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.ColorJitter(0.3, 0.3),
        ]
    return v2.Compose(steps)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    shuffle: bool = False,
    balanced: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A loader of uint8 batches. Training loaders shuffle (or sample classes evenly with
    ``balanced``) and drop a last partial batch, which would upset batch norm when tiny."""
    sampler = None
    if balanced:
        counts = np.bincount(dataset.targets)
        weights = 1.0 / counts[dataset.targets]
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), len(dataset), generator=generator
        )
    training = shuffle or balanced
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not balanced,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=training and len(dataset) > batch_size,
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init_fn(),
    )
