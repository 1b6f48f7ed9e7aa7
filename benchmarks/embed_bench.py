"""Embedding throughput, in one run: (a) the model alone on ready tensors, (b) ``curate embed``
end to end, (c) a naive one-image-at-a-time loop as in the reference notebook.

    .venv/bin/python benchmarks/embed_bench.py [--images 500] [--png 200] [--device auto]
        [--repeats 3]

Inputs are ~1 MP radiograph-like phantoms, JPEG (and a separate PNG set), cached under
benchmarks/out/. Figures are images per second and ratios against (a) and (c), each ratio taken
within one repeat (every repeat measures all of them in turn); printed per repeat, then as the
median and the worst repeat of each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import torchvision
from phantoms import OUT, make_images
from PIL import Image
from seeds import describe
from torchvision import transforms

from fracture_curate.embed import EmbedConfig, embed_manifest
from fracture_curate.embedder import default_batch_size, inference_model
from fracture_curate.runtime import core_workers, resolve_device, retain_freed_memory
from fracture_curate.scan import run_scan
from fracture_curate.weights import resolve_weights


def model_alone(device: torch.device, batch_size: int, seconds: float = 15.0) -> float:
    """(a): images/s of the embedder on uint8 batches already in memory (on the device), one
    process using every core's intra-op thread."""
    model = inference_model(resolve_weights().state_dict, "pool", device)
    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for _ in range(3):
            model(batch)
        _sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            count += batch_size
        _sync(device)
    return count / (time.perf_counter() - start)


def model_alone_per_core(batch_size: int, seconds: float = 15.0) -> float:
    """(a) the other way a CPU can run the model: one single-threaded process per core at once,
    as ``curate embed`` does on a CPU. Returns their summed images/s."""
    processes = os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        rates = pool.starmap(_single_thread_rate, [(batch_size, seconds)] * processes)
    return sum(rates)


def _single_thread_rate(batch_size: int, seconds: float) -> float:
    torch.set_num_threads(1)
    return model_alone(torch.device("cpu"), batch_size, seconds)


def end_to_end(folder: Path, name: str, device: str, batch_size: int | None) -> float:
    """(b): images/s of ``embed_manifest`` from files to embeddings.parquet (scan not timed)."""
    manifests = OUT / f"{name}_manifests"
    shutil.rmtree(manifests, ignore_errors=True)
    count = int((run_scan(folder, manifests).frame["status"] == "ok").sum())
    start = time.perf_counter()
    embed_manifest(manifests, EmbedConfig(), device=device, batch_size=batch_size)
    return count / (time.perf_counter() - start)


def naive_loop(folder: Path, device: torch.device, limit: int) -> float:
    """(c): open, transform and forward one image at a time, default memory format."""
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(resolve_weights().state_dict)
    model.classifier = torch.nn.Identity()
    model = model.eval().to(device)
    preprocess = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    paths = sorted(folder.rglob("*.jpg"))[:limit]
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
            model(image).cpu()
    return len(paths) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="JPEG phantoms")
    parser.add_argument("--png", type=int, default=200, help="PNG phantoms, reported apart")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the embed default")
    parser.add_argument("--naive-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every measure")
    args = parser.parse_args()

    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    # curate embed keeps freed memory on a CPU; every measure here runs under the same setting.
    retained = not on_cuda and retain_freed_memory()
    batch_size = args.batch_size or default_batch_size(on_cuda)
    jpeg = make_images("embed_jpeg", args.images, args.size)
    png = make_images("embed_png", args.png, args.size, png_fraction=1.0)
    name = torch.cuda.get_device_name() if on_cuda else platform.processor() or platform.machine()
    print(f"device: {name}; torch {torch.__version__}; {os.cpu_count()} cores")
    print(f"batch {batch_size}, {core_workers()} worker processes, {args.size}px inputs")
    print(f"freed memory retained (glibc mallopt) for every measure: {retained}")

    runs = range(1, args.repeats + 1)
    figures: dict[str, list[float]] = {}
    for run in runs:
        ceilings = {"(a) model alone, one process, all cores": model_alone(device, batch_size)}
        if not on_cuda:
            cores = os.cpu_count()
            label = f"(a) model alone, {cores} 1-thread processes"
            ceilings[label] = model_alone_per_core(batch_size)
        a = max(ceilings.values())
        b_jpeg = end_to_end(jpeg, "embed_jpeg", args.device, args.batch_size or None)
        b_png = end_to_end(png, "embed_png", args.device, args.batch_size or None)
        c = naive_loop(jpeg, device, args.naive_images)
        print(f"\nrun {run}\n{'measure':<44} {'img/s':>8} {'x (a)':>7} {'x (c)':>7}")
        for label, value in (
            *ceilings.items(),
            (f"(b) curate embed, {args.images} JPEG", b_jpeg),
            (f"(b) curate embed, {args.png} PNG", b_png),
            ("(c) naive loop, JPEG", c),
        ):
            print(f"{label:<44} {value:>8.1f} {value / a:>7.2f} {value / c:>7.2f}")
            figures.setdefault(f"{label}, img/s", []).append(value)
            if not label.startswith(("(a)", "(c)")):
                figures.setdefault(f"{label}, x (a)", []).append(value / a)
                figures.setdefault(f"{label}, x (c)", []).append(value / c)
    print("\nx (a) is against the faster of the (a) rows, the ceiling on this machine")
    print("median and worst (the lowest) of each figure over the runs:")
    for label, values in figures.items():
        form = "{:.1f}" if label.endswith("img/s") else "{:.2f}"
        print(f"  {label:<54} {describe(values, runs, form=form, word='runs')}")


if __name__ == "__main__":
    main()
