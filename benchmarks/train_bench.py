"""Training throughput: images/s end to end against the model alone, in one run.

    .venv/bin/python benchmarks/train_bench.py                       # CPU: a few minutes
    .venv/bin/python benchmarks/train_bench.py --model resnet18 --image-size 224 \\
        --batch-size 256 --images 8192 --epochs 3                      # an H100

End to end is the trainer's own path: JPEG files (about 1 megapixel, cached under
benchmarks/out/) -> shared loader -> resize -> decoded-image cache -> augmentation in loader
processes -> uint8 batches -> device -> normalise -> forward/backward/step. The model alone
runs the same training step on a uint8 batch already on the device. Both use the same model,
batch size, AMP (bf16 on CUDA) and channels_last settings. The first epoch, which fills the
cache, is timed apart from the steady epochs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fracture_curate.embed import resolve_device
from fracture_curate.synthetic import draw_phantom
from fracture_train.data import (
    ImageDataset,
    ImageStore,
    Preprocessing,
    augmentation,
    fill_workers,
    loader_workers,
    make_loader,
)
from fracture_train.engine import Criterion, Runtime, make_optimizer, train_epoch, train_step
from fracture_train.models import create_model

OUT = Path(__file__).parent / "out"


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` JPEG phantoms of ``size`` pixels a side, written once."""
    paths = [folder / f"img{index:05d}.jpg" for index in range(count)]
    marker = folder / f".complete-{count}-{size}"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for index, path in enumerate(paths):
            draw_phantom(rng, size, bool(index % 2)).save(path, quality=92)
        marker.touch()
    return paths


def model_alone(model, runtime, optimizer, criterion, batch_size, image_size, steps) -> float:
    """Images/s of the training step on one uint8 batch already on the device."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    images = images.to(runtime.device)
    targets = torch.randint(0, 2, (batch_size,), device=runtime.device)
    for _ in range(3):  # warm-up: kernel selection, allocator
        train_step(model, images, targets, optimizer, criterion, runtime)
    synchronize(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, images, targets, optimizer, criterion, runtime)
    synchronize(runtime.device)
    return steps * batch_size / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=320, help="training images per epoch")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the JPEG files")
    parser.add_argument("--epochs", type=int, default=2, help="the first one fills the cache")
    parser.add_argument("--steps", type=int, default=10, help="model-alone steps")
    parser.add_argument("--cache", default="memory", choices=("memory", "disk", "none"))
    parser.add_argument("--augment", default="standard")
    parser.add_argument("--workers", type=int, default=-1, help="-1: the trainer's default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
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
    paths = make_images(OUT / f"train_images-{args.source_size}", args.images, args.source_size)

    torch.manual_seed(0)
    preprocessing = Preprocessing(args.image_size)
    runtime = Runtime.create(device, preprocessing, amp=args.amp, channels_last=args.channels_last)
    model = runtime.prepare(create_model(args.model, 1))
    optimizer = make_optimizer(model, "adamw", 1e-4, 0.01)
    criterion = Criterion(binary=True).to(device)

    alone = model_alone(
        model, runtime, optimizer, criterion, args.batch_size, args.image_size, args.steps
    )

    store = ImageStore(
        paths, [p.stem for p in paths], args.image_size, args.cache, OUT / "train_cache"
    )
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
    epochs = [train_epoch(model, loader, optimizer, criterion, runtime) for _ in range(args.epochs)]

    rows = [("model alone (uint8 batch on device)", alone)]
    first = epochs[0].images / (fill_seconds + epochs[0].seconds)
    rows.append((f"end to end, epoch 1 (decoding {decoded})", first))
    if len(epochs) > 1:
        steady = float(np.median([stats.images_per_second for stats in epochs[1:]]))
        rows.append((f"end to end, epochs 2-{len(epochs)} (median)", steady))
    print(f"\n{'':<40} {'img/s':>9} {'x alone':>8}")
    for label, rate in rows:
        print(f"{label:<40} {rate:>9.1f} {rate / alone:>8.2f}")


if __name__ == "__main__":
    main()
