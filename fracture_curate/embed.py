"""``curate embed``: MobileNetV2 ImageNet embeddings of every kept image, keyed by content hash.

Work is saved in parts as it goes (``DIR/.embeddings.parts/``), so a killed run loses at most one
part; the next run embeds only what is missing and consolidates everything into
``DIR/embeddings.parquet``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Dataset

from fracture_curate.images import ImageLoadError, load_image, to_rgb8, to_uint8
from fracture_curate.manifest import (
    ManifestError,
    manifest_path,
    read_manifest,
    read_provenance,
    write_manifest,
)
from fracture_curate.runtime import (
    core_workers,
    model_threads,
    resolve_device,
    retain_freed_memory,
    torch_threads,
    worker_init_fn,
)
from fracture_curate.weights import IMAGENET, resolve_weights

LAYERS = {"pool": 1280, "logits": 1000}
RESIZE_MODES = ("stretch", "crop")
#: The parameters that decide an embedding's value; where the weights were found does not.
IDENTITY_KEYS = ("model", "layer", "image_size", "resize", "weights_sha256", "dim")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EmbedConfig:
    """What determines an embedding; runs with different settings never mix their vectors."""

    layer: str = "pool"  #: "pool" (1280-d global-pooled features) or "logits" (1000-d)
    image_size: int = 224
    resize: str = "stretch"  #: "stretch" the whole image, or "crop" (resize then centre-crop)
    weights: str = IMAGENET  #: "imagenet", "random" (tests) or a path to a state dict

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"unknown resize {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}"
            )


@dataclass(frozen=True)
class EmbedResult:
    """The consolidated table and what this run did."""

    frame: pd.DataFrame
    reused: int  #: embeddings carried over from earlier (possibly interrupted) runs
    embedded: int  #: images embedded by this run
    failed: dict[str, str]  #: image_id -> reason, for images that could not be loaded now
    params: dict[str, Any]


class MobileNetV2Embedder(nn.Module):
    """torchvision's MobileNetV2 taking uint8 NHWC-ordered batches, normalising on the device."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None, layer: str = "pool") -> None:
        super().__init__()
        model = torchvision.models.mobilenet_v2(weights=None)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        self.features = model.features
        self.classifier = model.classifier if layer == "logits" else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: N x 3 x H x W uint8 (any memory format); returns N x 1280 or N x 1000."""
        x = (images.float() - self.mean) / self.std
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x) if self.classifier is not None else x


def preprocess(source: str | Path | bytes, image_size: int, resize: str) -> np.ndarray:
    """Load through the shared loader and resize to ``image_size``: an H x W x 3 uint8 array.

    ``stretch`` resizes the whole image (nothing is cut off a radiograph); ``crop`` resizes the
    short side to ``image_size * 256 / 224`` and centre-crops, as ImageNet evaluation does.
    """
    side = image_size if resize == "stretch" else round(image_size * 256 / 224)
    # Resize in the image's own channels (one for a radiograph), then make three.
    image = Image.fromarray(to_uint8(load_image(source, draft_size=(side, side)).pixels))
    if resize == "stretch":
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    else:
        scale = side / min(image.size)
        width = max(side, round(image.width * scale))
        height = max(side, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - image_size) // 2, (height - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    return to_rgb8(np.array(image))


class ImageFiles(Dataset):
    """Preprocessed images by index; a file that fails to load yields its reason instead."""

    def __init__(self, paths: list[Path], image_size: int, resize: str) -> None:
        self.paths, self.image_size, self.resize = paths, image_size, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, preprocess(self.paths[index], self.image_size, self.resize), None
        except ImageLoadError as error:
            return index, None, error.reason
        except OSError as error:
            return index, None, f"cannot read file: {error}"


def collate(batch: list[tuple[int, np.ndarray | None, str | None]]) -> dict[str, Any]:
    """Stack the images that loaded into an N x 3 x H x W uint8 tensor (channels-last memory)."""
    loaded = [(index, array) for index, array, _ in batch if array is not None]
    images = torch.from_numpy(np.stack([array for _, array in loaded])) if loaded else None
    return {
        "indices": [index for index, _ in loaded],
        "images": images.permute(0, 3, 1, 2) if images is not None else None,
        "failures": {index: reason for index, array, reason in batch if array is None},
    }


def inference_model(
    state_dict: dict[str, torch.Tensor] | None, layer: str, device: torch.device
) -> nn.Module:
    """The embedder ready for inference: batch norms folded into the convolutions (which alone
    doubles CPU throughput), channels-last, on ``device``."""
    model = fold_batch_norms(MobileNetV2Embedder(state_dict, layer).eval())
    return model.to(device, memory_format=torch.channels_last)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm2d that follows a Conv2d in a Sequential into that
    convolution (inference only: the norms' running statistics become constants)."""
    for sequence in [module for module in model.modules() if isinstance(module, nn.Sequential)]:
        for index in reversed(range(len(sequence) - 1)):
            conv, norm = sequence[index], sequence[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequence[index] = fuse_conv_bn_eval(conv, norm)
                del sequence[index + 1]
    return model


def default_batch_size(on_cuda: bool) -> int:
    """Small batches on the CPU, where MobileNetV2's activations then stay in cache."""
    return 256 if on_cuda else 4


def embed_batch(
    model: nn.Module, batch: dict[str, Any], device: torch.device
) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """Run ``model`` on one collated batch: (dataset indices, float32 vectors, failures)."""
    vectors = np.empty((0, 0), dtype=np.float32)
    if batch["images"] is not None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        with torch.inference_mode(), autocast:
            images = batch["images"].to(device, non_blocking=True)
            vectors = model(images).float().cpu().numpy()
    return batch["indices"], vectors, batch["failures"]


class EmbeddedBatches(Dataset):
    """Whole batches, decoded *and embedded* in the DataLoader worker process that fetches them
    (on one intra-op thread, which PyTorch sets in its workers)."""

    def __init__(self, files: ImageFiles, batch_size: int, model: nn.Module) -> None:
        self.files, self.batch_size, self.model = files, batch_size, model

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[list[int], np.ndarray, dict[int, str]]:
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.files))
        batch = collate([self.files[position] for position in range(start, stop)])
        return embed_batch(self.model, batch, torch.device("cpu"))


def embed_batches(
    model: nn.Module,
    files: ImageFiles,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[list[int], np.ndarray, dict[int, str]]]:
    """Embed ``files`` in order: (dataset indices, float32 vectors, failures) per batch.

    On CUDA the worker processes decode and the main process runs the model. On a CPU each
    worker decodes and embeds batches of its own with one thread: data parallelism across cores
    beats feeding one model on every core, whose threads the decoding would interrupt
    (benchmarks/README.md).
    """
    if device.type == "cpu" and workers > 0:
        loader = DataLoader(
            EmbeddedBatches(files, batch_size, model),
            batch_size=None,
            num_workers=workers,
            collate_fn=_unchanged,
            prefetch_factor=2,
            worker_init_fn=worker_init_fn(retain_memory=True),
        )
        yield from loader
        return
    on_cuda = device.type == "cuda"
    loader = DataLoader(
        files,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=on_cuda,
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init_fn(),
    )
    with torch_threads(model_threads(on_cuda, workers)):
        for batch in loader:
            yield embed_batch(model, batch, device)


def _unchanged(item: Any) -> Any:
    return item


def embed_manifest(
    directory: str | Path,
    config: EmbedConfig = EmbedConfig(),
    *,
    root: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    checkpoint_every: int = 2048,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EmbedResult:
    """Embed every kept image of ``DIR/scan.parquet`` that has no embedding yet.

    ``root`` overrides the dataset folder recorded in the scan (for a dataset that moved).
    ``on_start(total)`` and ``on_batch(n)`` report progress.
    """
    directory = Path(directory)
    scan_file = manifest_path(directory, "scan")
    scan = read_manifest(scan_file, stage="scan", columns=["image_id", "path", "status"])
    scan_provenance = read_provenance(scan_file)
    root = Path(root) if root is not None else Path(scan_provenance["params"]["root"])
    kept = scan[scan["status"] == "ok"].drop_duplicates("image_id")
    if not root.is_dir():
        raise ManifestError(f"dataset folder {root} (from the scan) is missing; pass --root")

    torch_device = resolve_device(device)
    weights = resolve_weights(config.weights)
    params = asdict(config) | {
        "model": "torchvision.mobilenet_v2",
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "dim": LAYERS[config.layer],
    }
    out_file = manifest_path(directory, "embed")
    parts = PartStore(directory / ".embeddings.parts", params)
    done = _load_existing(out_file, parts, params)
    todo = kept[~kept["image_id"].isin(done["image_id"])]

    if on_start is not None:
        on_start(len(todo))
    failed: dict[str, str] = {}
    if len(todo):
        if torch_device.type == "cpu":
            retain_freed_memory()  # steadies CPU forward passes
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random weights (tests) are the same in every run
            model = inference_model(weights.state_dict, config.layer, torch_device)
        files = ImageFiles([root / p for p in todo["path"]], config.image_size, config.resize)
        failed = _embed_into_parts(
            model,
            files,
            todo["image_id"].to_numpy(),
            parts,
            device=torch_device,
            batch_size=batch_size,
            workers=workers,
            checkpoint_every=checkpoint_every,
            on_batch=on_batch,
        )

    frame = pd.concat([done, parts.read()], ignore_index=True).drop_duplicates("image_id")
    frame = kept[["image_id"]].merge(frame, on="image_id")  # scan order, current images only
    write_manifest(
        embeddings_table(frame, params["dim"]),
        out_file,
        stage="embed",
        params=params,
        inputs={"scan": scan_provenance},
    )
    parts.clear()
    return EmbedResult(
        frame=frame,
        reused=len(done),
        embedded=len(todo) - len(failed),
        failed=failed,
        params=params,
    )


def _embed_into_parts(
    model: nn.Module,
    files: ImageFiles,
    ids: np.ndarray,
    parts: PartStore,
    *,
    device: torch.device,
    batch_size: int | None,
    workers: int | None,
    checkpoint_every: int,
    on_batch: Callable[[int], None] | None,
) -> dict[str, str]:
    """Embed ``files`` into part files every ``checkpoint_every`` images; returns the failures."""
    on_cuda = device.type == "cuda"
    batches = embed_batches(
        model,
        files,
        device,
        batch_size=batch_size or default_batch_size(on_cuda),
        workers=core_workers() if workers is None else workers,
    )
    failed: dict[str, str] = {}
    pending_ids: list[str] = []
    pending_vectors: list[np.ndarray] = []
    for indices, vectors, failures in batches:
        failed.update({ids[index]: reason for index, reason in failures.items()})
        if indices:
            pending_ids.extend(ids[indices])
            pending_vectors.append(vectors)
        if len(pending_ids) >= checkpoint_every:
            parts.write(pending_ids, np.concatenate(pending_vectors))
            pending_ids, pending_vectors = [], []
        if on_batch is not None:
            on_batch(len(indices) + len(failures))
    if pending_ids:
        parts.write(pending_ids, np.concatenate(pending_vectors))
    return failed


def embeddings_table(frame: pd.DataFrame, dim: int) -> pa.Table:
    """``image_id`` and a fixed-size float32 list column ``embedding``."""
    vectors = (
        np.stack(frame["embedding"].to_list()).astype(np.float32)
        if len(frame)
        else np.empty((0, dim), np.float32)
    )
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
    return pa.table(
        {"image_id": pa.array(frame["image_id"].to_list(), pa.string()), "embedding": embedding}
    )


def same_embedding(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' parameters give interchangeable vectors (same model, weights, input)."""
    return all(a.get(key) == b.get(key) for key in IDENTITY_KEYS)


class PartStore:
    """Atomic part files of finished embeddings, each tagged with the run's parameters."""

    def __init__(self, folder: Path, params: dict[str, Any]) -> None:
        self.folder, self.params = folder, params

    def write(self, image_ids: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        index = len(list(self.folder.glob("part-*.parquet")))
        frame = pd.DataFrame({"image_id": image_ids, "embedding": list(vectors)})
        write_manifest(
            embeddings_table(frame, vectors.shape[1]),
            self.folder / f"part-{index:06d}.parquet",
            stage="embed",
            params=self.params,
        )

    def read(self) -> pd.DataFrame:
        """Every part written with the same parameters (others are stale and ignored)."""
        frames = []
        for part in sorted(self.folder.glob("part-*.parquet")):
            if same_embedding(read_provenance(part)["params"], self.params):
                frames.append(pd.read_parquet(part))
        return pd.concat(frames, ignore_index=True) if frames else _empty()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _load_existing(out_file: Path, parts: PartStore, params: dict[str, Any]) -> pd.DataFrame:
    """Embeddings already made with the same parameters: the last full file plus saved parts."""
    frames = [parts.read()]
    if out_file.exists() and same_embedding(read_provenance(out_file)["params"], params):
        frames.append(pd.read_parquet(out_file))
    frame = pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates("image_id")


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": pd.Series(dtype="string"), "embedding": pd.Series(dtype=object)}
    )
