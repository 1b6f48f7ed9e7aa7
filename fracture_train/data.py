"""The trainer's images: decoded once into a cache, augmented, and batched by loaders.

Images go through the project's shared loader and are resized (stretched, so nothing is cut off a
radiograph) to a square of ``image_size``. They travel as uint8 and are normalised on the device.
Decoding can cost more than the model, so decoded images can be cached once, in memory or on
disk (one ``.npy`` per image, keyed by image id and size, reusable across runs).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler
from torchvision.transforms import v2

from fracture_curate.dataset_files import ScannedFile
from fracture_curate.dicom import DEFAULT_WINDOW
from fracture_curate.images import ImageLoadError
from fracture_curate.manifest import atomic_path
from fracture_curate.model_input import Failure, ImageFiles, collate, preprocess
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.runtime import default_workers, worker_init_fn
from fracture_train.config import AUGMENT_PRESETS, CACHE_MODES
from fracture_train.distributed import World
from fracture_train.rows import DataError

#: Share of the machine's memory that ``--cache memory`` may take.
MEMORY_CACHE_SHARE = 0.5


class ImageStore:
    """Decoded, resized H x W x 3 uint8 images of a table's rows, by row position.

    ``cache`` "none" decodes on every access; "memory" decodes every image once into one array;
    "disk" keeps one ``.npy`` per image under ``cache_dir/<size>px/<image_id>.npy`` (a folder
    ``<size>px-<window>`` for DICOM files decoded with another window than the default).
    ``processes`` is how many processes of one run hold a memory cache on this machine at once.
    """

    def __init__(
        self,
        files: list[ScannedFile],
        image_size: int,
        cache: str = "memory",
        cache_dir: Path | None = None,
        *,
        processes: int = 1,
    ) -> None:
        if cache not in CACHE_MODES:
            raise DataError(f"unknown cache {cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if cache == "disk" and cache_dir is None:
            raise DataError("--cache disk needs a cache folder")
        self.files, self.image_size, self.cache = files, image_size, cache
        image_ids = [file.image_id for file in files]
        unique = list(dict.fromkeys(image_ids))
        slots = {image_id: position for position, image_id in enumerate(unique)}
        self.slot = np.array([slots[image_id] for image_id in image_ids], dtype=np.int64)
        window = files[0].window if files else DEFAULT_WINDOW
        named = f"{image_size}px" + ("" if window == DEFAULT_WINDOW else f"-{window}")
        self.folder = Path(cache_dir) / named.replace(":", "-") if cache == "disk" else None
        self.array: np.ndarray | None = None
        if cache == "memory":
            needed = len(unique) * image_size * image_size * 3
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            if needed * processes > MEMORY_CACHE_SHARE * available:
                each = f" in each of {processes} processes" if processes > 1 else ""
                raise DataError(
                    f"--cache memory needs {needed / 2**30:.1f} GiB for {len(unique)} images at "
                    f"{image_size}px{each}, more than half this machine's memory; use --cache disk"
                )
            self.array = np.zeros((len(unique), image_size, image_size, 3), dtype=np.uint8)
        self.filled = cache == "none"

    def __len__(self) -> int:
        return len(self.files)

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

    def fill(
        self,
        workers: int,
        on_progress: ProgressCallback | None = None,
        *,
        share: World | None = None,
    ) -> int:
        """Decode the images the cache lacks (in ``workers`` processes); returns how many.

        A file that fails to decode is an error here, before any training starts. Progress is
        reported in a phase "decoding". With ``share``, only that process's share of a disk
        cache's missing images is decoded (the processes of a run split the work), and the store
        is not filled until a call without it finds nothing missing.
        """
        todo = self.missing()
        if share is not None:
            todo = [todo[index] for index in share.shard(len(todo))]
        phase = Phase(on_progress, "decoding", len(todo))
        loader = DataLoader(
            ImageFiles([self.files[p] for p in todo], self.image_size, "stretch"),
            batch_size=32,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=worker_init_fn(),
        )
        failures: dict[int, Failure] = {}
        for batch in loader:
            failures.update(batch["failures"])
            if batch["images"] is not None:
                images = batch["images"].permute(0, 2, 3, 1).numpy()
                for index, image in zip(batch["indices"], images, strict=True):
                    self._store(todo[index], image)
            phase.advance(len(batch["indices"]) + len(batch["failures"]))
        if failures:
            index, (_, reason) = next(iter(failures.items()))
            raise DataError(
                f"{len(failures)} image(s) could not be decoded, e.g. "
                f"{self.files[todo[index]].path}: {reason}"
            )
        self.filled = share is None or share.size == 1
        return len(todo)

    def __getitem__(self, position: int) -> np.ndarray:
        if self.array is not None:
            return self.array[self.slot[position]]
        if self.folder is not None:
            return np.load(self._disk_path(position))
        file = self.files[position]
        try:
            return preprocess(file.read(), self.image_size, "stretch", file.window)
        except ImageLoadError as error:
            raise DataError(f"{file.path}: {error.reason}") from error

    def _disk_path(self, position: int) -> Path:
        return self.folder / f"{self.files[position].image_id}.npy"

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


def fill_workers(requested: int | None, processes: int = 1) -> int:
    """Decoding processes for filling a cache: ``requested``, else every core (nothing else
    runs meanwhile), shared among the ``processes`` of one run on this machine."""
    if requested is not None:
        return requested
    return max(1, (os.cpu_count() or 1) // processes)


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


class ShardedSampler(Sampler[int]):
    """One process's share of another sampler's order: every ``size``-th index from ``rank`` on.

    Every process of a run draws the same order (their generators are seeded alike each epoch),
    so the N processes' batches of B images at one step hold exactly the images one process
    would take in a batch of N x B: shuffling, or drawing classes evenly, stays what it is
    alone (torch's DistributedSampler draws an order of its own). The order is padded with its
    own first indices to a multiple of ``size``, as DistributedSampler pads, so that every
    process takes as many steps.
    """

    def __init__(self, sampler: Sampler[int], rank: int, size: int) -> None:
        self.sampler, self.rank, self.size = sampler, rank, size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        total = len(self) * self.size
        while order and len(order) < total:
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.size])


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    shuffle: bool = False,
    balanced: bool = False,
    generator: torch.Generator | None = None,
    world: World = World(),
) -> DataLoader:
    """A loader of uint8 batches. Training loaders shuffle (or sample classes evenly with
    ``balanced``) and drop a last partial batch, which would upset batch norm when tiny.

    A training loader of a process among several (``world``) loads that process's share of
    each batch of ``world.size x batch_size`` images (:class:`ShardedSampler`); ``generator``
    must then be seeded alike in every process.
    """
    sampler: Sampler[int] | None = None
    if balanced:
        counts = np.bincount(dataset.targets)
        weights = 1.0 / counts[dataset.targets]
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), len(dataset), generator=generator
        )
    elif shuffle and world.distributed:
        sampler = RandomSampler(dataset, generator=generator)
    training = shuffle or balanced
    init = worker_init_fn()
    if training and world.distributed:
        sampler = ShardedSampler(sampler, world.rank, world.size)  # type: ignore[arg-type]
        init = functools.partial(_seed_worker_by_rank, world.rank, init)
    samples = len(dataset) if sampler is None else len(sampler)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=training and samples > batch_size,
        prefetch_factor=4 if workers else None,
        worker_init_fn=init,
    )


def _seed_worker_by_rank(rank: int, init: Callable[[int], None], worker_id: int) -> None:
    """A loader worker's ``init``, then a random seed of its own: workers of every process
    are seeded alike by their shared generator, and would augment their images alike."""
    init(worker_id)
    torch.manual_seed((torch.initial_seed() + rank * 1_000_003) % 2**63)
