"""The embedding model and how files flow through it: torchvision's MobileNetV2 with its batch
norms folded, run in DataLoader workers on a CPU or fed by them on a GPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Dataset

from fracture_curate.model_input import Failure, ImageFiles, collate, normalisation
from fracture_curate.runtime import (
    model_threads,
    retain_freed_memory,
    torch_threads,
    worker_init_fn,
)
from fracture_curate.weights import WeightsError, resolve_weights

#: One batch's result: dataset indices of the images embedded, their float32 vectors (N x D),
#: and the (status, reason) of each image that failed to load.
EmbeddedBatch = tuple[list[int], np.ndarray, dict[int, Failure]]


class MobileNetV2Embedder(nn.Module):
    """torchvision's MobileNetV2 taking uint8 batches, normalising on the device."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None, layer: str = "pool") -> None:
        super().__init__()
        model = torchvision.models.mobilenet_v2(weights=None)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        self.features = model.features
        self.classifier = model.classifier if layer == "logits" else None
        mean, std = normalisation()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: N x 3 x H x W uint8 (any memory format); returns N x 1280 or N x 1000."""
        x = (images.float() - self.mean) / self.std
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x) if self.classifier is not None else x


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


def forward_batch(model: nn.Module, batch: dict[str, Any], device: torch.device) -> EmbeddedBatch:
    """Run ``model`` on one collated batch (see :func:`fracture_curate.model_input.collate`)."""
    vectors = np.empty((0, 0), dtype=np.float32)
    if batch["images"] is not None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        with torch.inference_mode(), autocast:
            images = batch["images"].to(device, non_blocking=True)
            vectors = model(images).float().cpu().numpy()
    return batch["indices"], vectors, batch["failures"]


class WorkerEmbeddedBatches(Dataset):
    """Whole batches, decoded *and embedded* in the DataLoader worker process that fetches them
    (on one intra-op thread, which PyTorch sets in its workers)."""

    def __init__(self, files: ImageFiles, batch_size: int, model: nn.Module) -> None:
        self.files, self.batch_size, self.model = files, batch_size, model

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, index: int) -> EmbeddedBatch:
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.files))
        batch = collate([self.files[position] for position in range(start, stop)])
        return forward_batch(self.model, batch, torch.device("cpu"))


def embed_files(
    model: nn.Module,
    files: ImageFiles,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
) -> Iterator[EmbeddedBatch]:
    """Embed ``files`` in order, a batch at a time.

    On CUDA the worker processes decode and the main process runs the model. On a CPU each
    worker decodes and embeds batches of its own with one thread: data parallelism across cores
    beats feeding one model on every core, whose threads the decoding would interrupt
    (benchmarks/README.md).
    """
    if device.type == "cpu" and workers > 0:
        loader = DataLoader(
            WorkerEmbeddedBatches(files, batch_size, model),
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
            yield forward_batch(model, batch, device)


def load_embedder(
    weights: str, layer: str, device: torch.device, *, allow_download: bool = True
) -> tuple[nn.Module, str]:
    """The embedder with ``weights`` ("imagenet", "random" or a path) found, verified and loaded,
    ready for inference on ``device``; and where the weights came from. Without
    ``allow_download`` (Ray workers), weights that are not installed are an error."""
    resolved = resolve_weights(weights, allow_download=allow_download)
    if device.type == "cpu":
        retain_freed_memory()  # steadies CPU forward passes
    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights (tests) are the same in every run
        try:
            model = inference_model(resolved.state_dict, layer, device)
        except RuntimeError as error:  # load_state_dict: missing, unexpected or misshapen keys
            first = str(error).splitlines()[0].rstrip(":")
            raise WeightsError(
                f"weights {resolved.path} do not fit torchvision's MobileNetV2 ({first}); pass "
                "a MobileNetV2 state dict, or --weights imagenet"
            ) from error
    return model, resolved.source


def _unchanged(item: Any) -> Any:
    return item
