"""Training throughput: images/s end to end against the model alone, in one run.

    .venv/bin/python benchmarks/train_bench.py       # CPU: mobilenetv2_100, 128 px, ~1-2 min
    .venv/bin/python benchmarks/train_bench.py --model resnet18 --image-size 224 \\
        --batch-size 256 --images 8192 --source-size 512 --epochs 4    # a GPU (bf16 AMP)

End to end is the trainer's own path: JPEG phantoms (--source-size a side, written once under
benchmarks/out/) -> shared loader -> resize -> decoded-image cache -> augmentation (in loader
processes on a GPU machine) -> uint8 batches -> device -> normalise -> forward/backward/step.
The model alone runs the same training step on a uint8 batch already on the device. Both use
the same model, batch size, AMP (bf16 on CUDA) and channels_last settings. Rounds alternate the
two measurements (a shared machine's load then moves both); round 1's end-to-end figure
includes filling the cache. ``--repeats`` runs it all again from a fresh model, store and loader;
each run's steady state is the median of its rounds 2 on, and the summary gives the median and
the worst (the lowest) of the runs' steady states.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from phantoms import OUT, make_images
from seeds import describe

from fracture_curate.dataset_files import ScannedFile, content_id
from fracture_curate.model_input import Preprocessing
from fracture_curate.runtime import model_threads, resolve_device, torch_threads
from fracture_train.data import (
    ImageDataset,
    ImageStore,
    augmentation,
    fill_workers,
    loader_workers,
    make_loader,
)
from fracture_train.engine import Criterion, Placement, make_optimizer, train_epoch, train_step
from fracture_train.models import create_model


def model_alone(model, placement, optimizer, criterion, batch_size, image_size, steps) -> float:
    """Images/s of the training step on one uint8 batch already on the device."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    images = images.to(placement.device)
    targets = torch.randint(0, 2, (batch_size,), device=placement.device)
    for _ in range(2):  # warm-up: kernel selection, allocator
        train_step(model, images, targets, optimizer, criterion, placement)
    synchronize(placement.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, images, targets, optimizer, criterion, placement)
    synchronize(placement.device)
    return steps * batch_size / (time.perf_counter() - start)


def _identity(path: Path) -> tuple[str, int]:
    """A file's image id and size, as a scan records them."""
    data = path.read_bytes()
    return content_id(data), len(data)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="training images per epoch")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the JPEG files")
    parser.add_argument("--epochs", type=int, default=4, help="rounds; the first fills the cache")
    parser.add_argument("--steps", type=int, default=15, help="model-alone steps per round")
    parser.add_argument("--cache", default="memory", choices=("memory", "disk", "none"))
    parser.add_argument("--augment", default="standard")
    parser.add_argument("--workers", type=int, default=-1, help="-1: the trainer's default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=3, help="runs from a fresh model")
    args = parser.parse_args()

    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    requested = None if args.workers < 0 else args.workers
    workers = loader_workers(requested, on_cuda, args.cache)
    name = torch.cuda.get_device_name(device) if on_cuda else platform.machine()
    print(f"device: {device} ({name}), {os.cpu_count()} cores, {workers} loader workers")
    print(
        f"{args.model}, {args.image_size}px, batch {args.batch_size}, "
        f"{'bf16 AMP' if args.amp and on_cuda else 'fp32'}, "
        f"{'channels_last' if args.channels_last else 'contiguous'}, cache {args.cache}, "
        f"augment {args.augment}"
    )
    folder = make_images(f"train-{args.images}-{args.source_size}", args.images, args.source_size)
    paths = sorted(folder.glob("*/*.jpg"))
    runs = range(1, args.repeats + 1)
    steady = [run_once(args, paths, device, workers, requested, run) for run in runs]
    if args.epochs > 1:
        print(f"\nsteady states over the runs (median and worst of {len(steady)}):")
        for index, label in enumerate(("model alone img/s", "end to end img/s")):
            print(
                f"  {label}: {describe([s[index] for s in steady], runs, True, '{:.1f}', 'runs')}"
            )
        ratios = [s[2] for s in steady]
        print(f"  end to end / model alone: {describe(ratios, runs, True, '{:.2f}', 'runs')}")


def run_once(
    args: argparse.Namespace,
    paths: list[Path],
    device: torch.device,
    workers: int,
    requested: int | None,
    run: int,
) -> tuple[float, float, float]:
    """One run from a fresh model, store and loader; its steady state (model alone, end to end,
    ratio; medians of rounds 2 on), NaN with one round."""
    on_cuda = device.type == "cuda"
    torch.manual_seed(0)
    preprocessing = Preprocessing(args.image_size)
    placement = Placement.create(
        device, preprocessing, amp=args.amp, channels_last=args.channels_last
    )
    model = placement.prepare(create_model(args.model, 1))
    optimizer = make_optimizer(model, "adamw", 1e-4, 0.01)
    criterion = Criterion(binary=True).to(device)

    files = [ScannedFile(path.parent, path.name, *_identity(path)) for path in paths]
    store = ImageStore(files, args.image_size, args.cache, OUT / "train_cache")
    start = time.perf_counter()
    decoded = store.fill(fill_workers(requested))
    fill_seconds = time.perf_counter() - start
    targets = np.arange(len(paths)) % 2
    loader = make_loader(
        ImageDataset(
            store, np.arange(len(paths)), targets, augmentation(args.augment, args.image_size)
        ),
        batch_size=args.batch_size,
        workers=workers,
        pin_memory=on_cuda,
        shuffle=True,
    )
    # Rounds of (model alone, one epoch end to end), so that both see the same machine: a
    # shared machine's load moves both figures, less so their ratio.
    alone, end_to_end = [], []
    for _ in range(args.epochs):
        alone.append(
            model_alone(
                model, placement, optimizer, criterion, args.batch_size, args.image_size, args.steps
            )
        )
        with torch_threads(model_threads(on_cuda, workers)):  # loader processes get cores
            end_to_end.append(train_epoch(model, loader, optimizer, criterion, placement))

    first = end_to_end[0].images / (fill_seconds + end_to_end[0].seconds)
    print(f"\nrun {run}\n{'round':<7} {'alone img/s':>12} {'end to end img/s':>17} {'ratio':>6}")
    print(
        f"{'1':<7} {alone[0]:>12.1f} {first:>17.1f} {first / alone[0]:>6.2f}  (decoding {decoded})"
    )
    for index in range(1, len(alone)):
        rate = end_to_end[index].images_per_second
        print(f"{index + 1:<7} {alone[index]:>12.1f} {rate:>17.1f} {rate / alone[index]:>6.2f}")
    if len(alone) == 1:
        return float("nan"), float("nan"), float("nan")
    ratios = [e.images_per_second / a for e, a in zip(end_to_end[1:], alone[1:], strict=True)]
    steady = (
        float(np.median(alone[1:])),
        float(np.median([e.images_per_second for e in end_to_end[1:]])),
        float(np.median(ratios)),
    )
    print(
        f"steady state (rounds 2-{len(alone)}, median): model alone {steady[0]:.1f} img/s, "
        f"end to end {steady[1]:.1f} img/s, ratio {steady[2]:.2f} (worst round {min(ratios):.2f})"
    )
    return steady


if __name__ == "__main__":
    main()
