"""Prediction throughput of a trained run, in one run: (a) its model alone on batches already in
memory, (b) ``train predict`` end to end (find, read, decode, resize, predict), (c) the same with
``--explain`` (a Grad-CAM overlay written per image).

    .venv/bin/python benchmarks/predict_bench.py [--run runs/demo] [--images 500]
        [--explain-images 500] [--repeats 3]

The run is the demo's (`make demo`: MobileNetV2 at 224 px). Inputs are ~1 MP radiograph-like
phantoms as JPEG, cached under benchmarks/out/. (c) runs on the first ``--explain-images`` of
them (all by default): Grad-CAM's backward pass makes it the slow path.
Figures are images per second and the ratio of (b) and (c) to (a), each within one repeat;
printed per repeat, then as the median and the worst repeat.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from phantoms import OUT, make_images
from seeds import describe

from fracture_curate.runtime import model_threads, torch_threads
from fracture_train.predict import (
    find_files,
    load_ensemble,
    predict_files,
    write_explanations,
)


def model_alone(run: Path, batch_size: int, seconds: float = 15.0) -> float:
    """(a): images/s of the run's model on uint8 batches in memory, normalisation included."""
    ensemble = load_ensemble([run], device="cpu")
    model, placement = ensemble.models[0], ensemble.placements[0]
    side = ensemble.configs[0].preprocessing.image_size
    batch = torch.randint(0, 256, (batch_size, 3, side, side), dtype=torch.uint8)
    with torch_threads(model_threads(False, 0)), torch.inference_mode():
        for _ in range(3):
            model(placement.inputs(batch))
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(placement.inputs(batch))
            count += batch_size
    return count / (time.perf_counter() - start)


def end_to_end(run: Path, folder: Path) -> float:
    """(b): images/s of ``train predict RUN FOLDER`` (the model loaded beforehand)."""
    ensemble = load_ensemble([run], device="cpu")
    start = time.perf_counter()
    frame, _ = predict_files(ensemble, [folder])
    assert (frame["status"] == "ok").all()
    return len(frame) / (time.perf_counter() - start)


def explained(run: Path, files: list[Path]) -> float:
    """(c): images/s of ``train predict RUN FILES --explain DIR``."""
    ensemble = load_ensemble([run], device="cpu")
    out = OUT / "predict-explained"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    frame, prediction = predict_files(ensemble, files)
    write_explanations(ensemble, frame, prediction, out)
    return len(frame) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a trained run")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--explain-images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.run / "config.json").is_file():
        parser.error(f"{args.run} is not a run folder; `make demo` writes runs/demo")
    folder = make_images("predict", args.images)
    files = find_files([folder])[: args.explain_images]
    rates: dict[str, list[float]] = {"model": [], "predict": [], "explain": []}
    for repeat in range(1, args.repeats + 1):
        found = {
            "model": model_alone(args.run, 32),
            "predict": end_to_end(args.run, folder),
            "explain": explained(args.run, files),
        }
        for key, value in found.items():
            rates[key].append(value)
        print(
            f"repeat {repeat}: model alone {found['model']:.1f} img/s, train predict "
            f"{found['predict']:.1f} img/s ({found['predict'] / found['model']:.2f}x), with "
            f"--explain {found['explain']:.2f} img/s ({found['explain'] / found['model']:.3f}x)"
        )
    runs = list(range(1, args.repeats + 1))
    ratio = [p / m for p, m in zip(rates["predict"], rates["model"], strict=True)]
    slow = [e / m for e, m in zip(rates["explain"], rates["model"], strict=True)]
    print(f"model alone, img/s: {describe(rates['model'], runs, form='{:.1f}', word='runs')}")
    print(f"train predict, img/s: {describe(rates['predict'], runs, form='{:.1f}', word='runs')}")
    print(f"  / model alone: {describe(ratio, runs, form='{:.2f}', word='runs')}")
    print(f"--explain, img/s: {describe(rates['explain'], runs, form='{:.2f}', word='runs')}")
    print(f"  / model alone: {describe(slow, runs, form='{:.3f}', word='runs')}")


if __name__ == "__main__":
    main()
