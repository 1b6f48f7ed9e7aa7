"""``train``: fit a classifier on the train rows, select on val, report on test.

Everything is checked before training starts (manifest, files, model, weights, run folder,
image decoding). Each epoch saves the last checkpoint and the resume state, and the best
checkpoint by the validation metric; ``resume`` continues after the last finished epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from fracture_curate import __version__
from fracture_curate.manifest import atomic_path, read_provenance
from fracture_curate.runtime import model_threads, resolve_device, torch_threads
from fracture_train.checkpoint import (
    BEST,
    CONFIG_FILE,
    FORMAT,
    LAST,
    RESUME_FILE,
    CheckpointError,
    load_model,
    load_resume_state,
    read_json,
    save_resume_state,
    save_weights,
    weights_epoch,
    weights_path,
    write_json,
)
from fracture_train.data import (
    AUGMENT_PRESETS,
    CACHE_MODES,
    ImageDataset,
    ImageStore,
    Preprocessing,
    Rows,
    augmentation,
    fill_workers,
    load_training_rows,
    loader_workers,
    make_loader,
)
from fracture_train.engine import (
    OPTIMIZERS,
    SCHEDULES,
    Criterion,
    Runtime,
    Schedule,
    class_weights,
    make_optimizer,
    predict,
    train_epoch,
)
from fracture_train.evaluate import predict_splits, write_report
from fracture_train.metrics import classification_report, threshold_for_sensitivity
from fracture_train.models import build_model, freeze, num_outputs
from fracture_train.plots import plot_history
from fracture_train.report import ProgressTask

BALANCE = ("none", "weights", "sampler")
SELECT_METRICS = ("loss", "accuracy", "balanced_accuracy", "auroc")
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
#: Options that may change when a run is resumed; every other option must stay the same.
RESUMABLE = (
    "manifest",
    "out",
    "root",
    "epochs",
    "patience",
    "target_sensitivity",
    "device",
    "amp",
    "channels_last",
    "workers",
    "cache",
    "cache_dir",
    "resume",
)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (the CLI's options, one to one)."""

    manifest: Path
    out: Path
    root: Path | None = None
    model: str = "resnet18"
    pretrained: bool = False
    weights: Path | None = None
    image_size: int = 224
    freeze: str = "none"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_every: int = 10
    lr_factor: float = 0.1
    plateau_patience: int = 2
    epochs: int = 10
    batch_size: int = 32
    label_smoothing: float = 0.0
    balance: str = "none"
    augment: str = "standard"
    patience: int = 5
    select_metric: str = "loss"
    target_sensitivity: float = 0.95
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None
    cache: str = "memory"
    cache_dir: Path | None = None
    seed: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("balance", BALANCE),
            ("augment", AUGMENT_PRESETS),
            ("select_metric", SELECT_METRICS),
            ("cache", CACHE_MODES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"unknown {name.replace('_', '-')} {getattr(self, name)!r}; "
                    f"choose one of {', '.join(choices)}"
                )
        if not 0 < self.target_sensitivity <= 1:
            raise ValueError("--target-sensitivity must be in (0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if min(self.epochs, self.batch_size, self.image_size, self.step_every) < 1:
            raise ValueError("--epochs, --batch-size, --image-size and --step-every must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }


@dataclass
class LoopState:
    """Where the epoch loop stands; saved with every epoch for ``resume``."""

    epoch: int = 0
    best_epoch: int = 0
    best_value: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its folder, metrics and per-epoch history."""

    out: Path
    metrics: dict[str, Any]
    history: pd.DataFrame


@dataclass
class _Fit:
    """The objects one training run works with."""

    model: torch.nn.Module
    runtime: Runtime
    train_loader: DataLoader
    val_loader: DataLoader
    generator: torch.Generator
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    schedule: Schedule


def train_run(
    config: TrainConfig,
    *,
    progress: Any = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train, select and report as ``config`` says; returns the run's metrics.

    ``progress`` is an optional ``rich.progress.Progress`` for decoding, batches and evaluation;
    ``on_epoch(row)`` receives each epoch's history row; ``log`` one-line notes.
    """
    out = Path(config.out)
    rows = load_training_rows(config.manifest, config.root)
    _check_run_folder(out, config.resume)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    outputs = num_outputs(len(rows.class_names))
    built = build_model(config.model, outputs, pretrained=config.pretrained, weights=config.weights)
    frozen = freeze(built.model, config.freeze)
    preprocessing = Preprocessing(config.image_size)
    run_config = {
        "format": FORMAT,
        "tool_version": __version__,
        "model": config.model,
        "num_outputs": outputs,
        "class_names": rows.class_names,
        "positive_class": rows.positive_class,
        "task": "multiclass" if rows.positive_class is None else "binary",
        "preprocessing": asdict(preprocessing),
        "initial_weights": built.weights,
        "training": config.to_dict(),
        "manifest_provenance": read_provenance(config.manifest),
        "val_threshold": None,
    }
    if config.resume:
        _check_resume(out, run_config)
    _log_setup(log, rows, built.weights, frozen, device, config)
    store = ImageStore(
        [rows.root / path for path in rows.frame["path"]],
        rows.frame["image_id"].tolist(),
        config.image_size,
        config.cache,
        config.cache_dir or out / "cache",
    )
    with ProgressTask(progress, "decoding", len(store.missing())) as task:
        decoded = store.fill(fill_workers(config.workers), task.advance)
    if config.cache != "none":
        log(f"cache: {config.cache}, {decoded} image(s) decoded at {config.image_size}px")
    if not config.resume:
        write_json(out / CONFIG_FILE, run_config)

    runtime = Runtime.create(
        device, preprocessing, amp=config.amp, channels_last=config.channels_last
    )
    fit = _set_up(config, rows, store, runtime, built.model)
    threads = model_threads(device.type == "cuda", fit.train_loader.num_workers)
    with torch_threads(threads):
        loop, history = _train(out, fit, config, rows, progress, on_epoch, log)
        plot_history(pd.DataFrame(history), out / CURVES_FILE)
        metrics = _final_report(out, rows, store, fit, config, run_config, loop, progress)
    return TrainResult(out=out, metrics=metrics, history=pd.DataFrame(history))


def _train(
    out: Path,
    fit: _Fit,
    config: TrainConfig,
    rows: Rows,
    progress: Any,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    log: Callable[[str], None],
) -> tuple[LoopState, list[dict[str, Any]]]:
    """The epoch loop, from the start or after the last finished epoch; saves every epoch."""
    loop, history = LoopState(), []
    if config.resume:
        loop, history = _restore(out, fit)
        log(f"resuming after epoch {loop.epoch} (best so far: epoch {loop.best_epoch})")
        if loop.stopped_early:
            log("the run had stopped early; nothing left to train")
    for epoch in range(loop.epoch + 1, config.epochs + 1):
        if loop.stopped_early:
            break
        row = _epoch(fit, epoch, config, rows, progress)
        row["best"] = _improves(row[f"val_{config.select_metric}"], loop, config.select_metric)
        if row["best"]:
            loop.best_epoch, loop.best_value = epoch, row[f"val_{config.select_metric}"]
            loop.bad_epochs = 0
            save_weights(fit.model, weights_path(out, BEST), epoch=epoch)
        else:
            loop.bad_epochs += 1
        loop.epoch = epoch
        loop.stopped_early = bool(config.patience) and loop.bad_epochs >= config.patience
        history.append(row)
        _save_epoch(out, fit, loop, history)
        if on_epoch is not None:
            on_epoch(row)
        if loop.stopped_early:
            log(
                f"early stop: val {config.select_metric} has not improved for "
                f"{config.patience} epochs"
            )
    return loop, history


def _set_up(
    config: TrainConfig, rows: Rows, store: ImageStore, runtime: Runtime, model: torch.nn.Module
) -> _Fit:
    """Loaders, loss, optimizer and schedule for ``model``, moved to the runtime's device."""
    on_cuda = runtime.device.type == "cuda"
    workers = loader_workers(config.workers, on_cuda, config.cache)
    targets = rows.frame["target"].to_numpy()
    train_rows, val_rows = rows.split("train"), rows.split("val")
    generator = torch.Generator()
    train_loader = make_loader(
        ImageDataset(
            store, train_rows, targets[train_rows], augmentation(config.augment, config.image_size)
        ),
        batch_size=config.batch_size,
        workers=workers,
        pin_memory=on_cuda,
        shuffle=True,
        balanced=config.balance == "sampler",
        generator=generator,
    )
    val_loader = make_loader(
        ImageDataset(store, val_rows, targets[val_rows]),
        batch_size=config.batch_size,
        workers=workers,
        pin_memory=on_cuda,
    )
    weights = None
    if config.balance == "weights":
        weights = class_weights(targets[train_rows], len(rows.class_names))
    criterion = Criterion(rows.positive_class is not None, weights, config.label_smoothing)
    model = runtime.prepare(model)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    schedule = Schedule(
        optimizer,
        config.schedule,
        epochs=config.epochs,
        steps_per_epoch=len(train_loader),
        warmup_epochs=config.warmup_epochs,
        step_every=config.step_every,
        factor=config.lr_factor,
        plateau_patience=config.plateau_patience,
    )
    return _Fit(
        model=model,
        runtime=runtime,
        train_loader=train_loader,
        val_loader=val_loader,
        generator=generator,
        criterion=criterion.to(runtime.device),
        optimizer=optimizer,
        schedule=schedule,
    )


def _epoch(fit: _Fit, epoch: int, config: TrainConfig, rows: Rows, progress: Any) -> dict[str, Any]:
    """Train one epoch and validate; the epoch's history row (without "best").

    Each epoch seeds its own shuffling and augmentation, so a resumed run sees the same data
    as an uninterrupted one.
    """
    torch.manual_seed(config.seed * 100_003 + epoch)
    fit.generator.manual_seed(config.seed * 100_003 + epoch)
    lr = fit.schedule.lr
    loader = fit.train_loader
    images = len(loader) * config.batch_size if loader.drop_last else len(loader.dataset)
    with ProgressTask(progress, f"epoch {epoch}/{config.epochs}", images) as task:
        stats = train_epoch(
            fit.model, loader, fit.optimizer, fit.criterion, fit.runtime, fit.schedule, task.advance
        )
    with ProgressTask(progress, "validating", len(fit.val_loader.dataset)) as task:
        probs, targets, val_loss = predict(fit.model, fit.val_loader, fit.runtime, task.advance)
    fit.schedule.after_epoch(val_loss)
    report = classification_report(targets, probs, rows.class_names, positive=rows.positive_index)
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "val_loss": val_loss,
        "val_accuracy": report["accuracy"],
        "val_balanced_accuracy": report["balanced_accuracy"],
        "val_auroc": report["auroc"],
        "images_per_s": stats.images_per_second,
        "seconds": stats.seconds,
    }


def _save_epoch(out: Path, fit: _Fit, loop: LoopState, history: list[dict[str, Any]]) -> None:
    """The last weights, the resume state and the history, after every epoch."""
    save_weights(fit.model, weights_path(out, LAST), epoch=loop.epoch)
    state = {"loop": asdict(loop), "schedule": fit.schedule.state_dict()}
    save_resume_state(out / RESUME_FILE, fit.optimizer, state)
    with atomic_path(out / HISTORY_FILE) as temp:
        pd.DataFrame(history).to_csv(temp, index=False)


def _final_report(
    out: Path,
    rows: Rows,
    store: ImageStore,
    fit: _Fit,
    config: TrainConfig,
    run_config: dict[str, Any],
    loop: LoopState,
    progress: Any,
) -> dict[str, Any]:
    """Reload the best checkpoint from disk (as a user would), predict val and test, choose the
    threshold on val, and write the report."""
    model, _ = load_model(out, BEST)
    splits = {"val": rows.split("val"), "test": rows.split("test")}
    total = sum(len(positions) for positions in splits.values())
    with ProgressTask(progress, "final evaluation", total) as task:
        results = predict_splits(
            fit.runtime.prepare(model),
            rows,
            store,
            fit.runtime,
            splits,
            batch_size=config.batch_size,
            workers=fit.val_loader.num_workers,
            on_batch=task.advance,
        )
    threshold = None
    if rows.positive_index is not None:
        val = results[0]
        threshold = threshold_for_sensitivity(
            (val.targets == rows.positive_index).astype(int),
            val.probs[:, rows.positive_index],
            config.target_sensitivity,
        )
    selection = {
        "metric": config.select_metric,
        "best_epoch": loop.best_epoch,
        "best_value": loop.best_value,
        "epochs_run": loop.epoch,
        "stopped_early": loop.stopped_early,
    }
    header = {
        "run": str(out),
        "model": config.model,
        "initial_weights": run_config["initial_weights"],
        "manifest": str(config.manifest),
        "task": run_config["task"],
        "selection": selection,
        "target_sensitivity": config.target_sensitivity,
    }
    metrics = write_report(
        out,
        rows,
        results,
        val_threshold=threshold,
        header=header,
        provenance={"run": str(out), "manifest": str(config.manifest), "checkpoint": BEST},
    )
    saved = read_json(out / CONFIG_FILE)
    write_json(out / CONFIG_FILE, saved | {"val_threshold": threshold, "selection": selection})
    return metrics


def _check_run_folder(out: Path, resume: bool) -> None:
    """A new run needs a folder without a finished epoch; a resumed one needs one with."""
    has_epochs = (out / RESUME_FILE).exists()
    if resume and not has_epochs:
        raise CheckpointError(f"--resume: {out} holds no run to resume ({RESUME_FILE} missing)")
    if not resume and has_epochs:
        raise CheckpointError(f"{out} already holds a run; pass --resume or choose another --out")


def _check_resume(out: Path, run_config: dict[str, Any]) -> None:
    """The resumed run must have the same classes, model and training options."""
    saved = read_json(out / CONFIG_FILE)
    if saved.get("class_names") != run_config["class_names"]:
        raise CheckpointError(
            f"--resume: the manifest's classes {run_config['class_names']} differ from the "
            f"run's {saved.get('class_names')}"
        )
    old, new = saved.get("training", {}), run_config["training"]
    changed = [
        f"{name.replace('_', '-')} {old.get(name)!r} -> {new[name]!r}"
        for name in (field.name for field in fields(TrainConfig))
        if name not in RESUMABLE and old.get(name) != new[name]
    ]
    if changed:
        raise CheckpointError(
            "--resume needs the run's own options; changed: " + "; ".join(changed)
        )


def _restore(out: Path, fit: _Fit) -> tuple[LoopState, list[dict[str, Any]]]:
    """Load the last weights, the optimizer, schedule and loop state, and the history so far."""
    state = load_resume_state(out / RESUME_FILE, fit.optimizer)
    loop = LoopState(**state["loop"])
    if weights_epoch(weights_path(out, LAST)) != loop.epoch:
        raise CheckpointError(
            f"{out}: last.safetensors and {RESUME_FILE} are from different epochs "
            "(the run was killed while saving); start a new run"
        )
    fit.model.load_state_dict(load_file(weights_path(out, LAST)))
    fit.schedule.load_state_dict(state["schedule"])
    history = pd.read_csv(out / HISTORY_FILE)
    history = history[history["epoch"] <= loop.epoch]
    return loop, history.to_dict("records")


def _improves(value: float, loop: LoopState, metric: str) -> bool:
    """Whether ``value`` beats the best so far (lower loss, higher anything else); NaN never
    does, except that the first epoch is always a best."""
    best = loop.best_value
    if value is None or math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "loss" else value > best


def _log_setup(
    log: Callable[[str], None],
    rows: Rows,
    weights: str,
    frozen: int,
    device: torch.device,
    config: TrainConfig,
) -> None:
    counts = rows.frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    for split in ("train", "val", "test"):
        parts = ", ".join(f"{label} {count}" for label, count in counts.loc[split].items())
        log(f"{split}: {parts}")
    task = (
        f"binary, positive class {rows.positive_class!r} (one logit, BCE)"
        if rows.positive_class is not None
        else f"{len(rows.class_names)} classes (cross-entropy)"
    )
    log(f"task: {task}")
    log(f"model: {config.model}; weights: {weights}")
    if frozen:
        log(f"frozen: {frozen} parameter tensors (--freeze {config.freeze})")
    amp = "bf16 AMP" if config.amp and device.type == "cuda" else "fp32"
    layout = "channels_last" if config.channels_last else "contiguous"
    log(f"device: {device} ({amp}, {layout})")
