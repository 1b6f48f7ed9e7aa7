"""``train``: fit a classifier on the train rows, select on val, evaluate on test.

Everything is checked before training starts (manifest, files, model, weights, run folder,
image decoding). Each epoch saves the last checkpoint and the resume state, and the best
checkpoint by the validation metric; ``resume`` continues after the last finished epoch.

Under torchrun, N processes train one DistributedDataParallel model: each takes its share of
every step's N x ``batch_size`` images, predicts its share of val and test, and rank 0 alone
decides (on everyone's predictions, gathered), writes the run folder and reports.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fracture_curate.dataset_files import shown_path
from fracture_curate.errors import ConfigError
from fracture_curate.manifest import atomic_path, folder_lock, read_provenance
from fracture_curate.model_input import Preprocessing
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.runtime import model_threads, torch_threads
from fracture_curate.schema import HISTORY_FILE, SPLITS
from fracture_train.checkpoint import (
    BEST,
    LAST,
    RESUME_FILE,
    RunConfig,
    load_model,
    read_run_config,
    save_resume_state,
    save_weights,
    weights_path,
    write_run_config,
)
from fracture_train.config import TrainConfig
from fracture_train.data import (
    ImageDataset,
    ImageStore,
    augmentation,
    fill_workers,
    loader_workers,
    make_loader,
)
from fracture_train.distributed import (
    World,
    barrier,
    device_for,
    gather,
    gather_predictions,
    launched,
    process_group,
    share,
)
from fracture_train.engine import (
    Criterion,
    EpochStats,
    Placement,
    Schedule,
    class_weights,
    make_optimizer,
    predict,
    train_epoch,
)
from fracture_train.evaluate import predict_splits, write_evaluation
from fracture_train.metrics import classification_metrics
from fracture_train.models import build_model, freeze, num_outputs
from fracture_train.plots import plot_history
from fracture_train.resume import check_resume, check_run_folder, restore
from fracture_train.rows import Rows, load_training_rows
from fracture_train.selection import LoopState, validation_threshold

CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its folder, metrics and per-epoch history (under torchrun, the metrics
    are rank 0's; the other processes' are empty)."""

    out: Path
    metrics: dict[str, Any]
    history: pd.DataFrame


@dataclass
class _Fit:
    """The objects one training run works with."""

    model: torch.nn.Module  #: the model itself: what is saved and what predicts
    trainee: torch.nn.Module  #: what trains: the model, or its DistributedDataParallel wrapper
    placement: Placement
    world: World
    train_loader: DataLoader
    val_loader: DataLoader  #: this process's share of val
    val_share: np.ndarray  #: where that share's rows stand among val's
    generator: torch.Generator
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    schedule: Schedule


def train_run(
    config: TrainConfig,
    *,
    on_progress: ProgressCallback | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train, select and evaluate as ``config`` says; returns the run's metrics.

    ``on_progress`` follows decoding, each epoch, validation and the final evaluation;
    ``on_epoch(row)`` receives each epoch's history row; ``log`` one-line notes. Under torchrun
    (several processes), only rank 0 calls them, writes files and returns metrics.
    """
    out = Path(config.out)
    world = launched()
    if not world.is_main:
        on_progress, on_epoch, log = None, None, _silent
    rows = load_training_rows(config.manifest, config.root)
    check_run_folder(out, config.resume)
    device = device_for(world, config.device)
    check_sync_batchnorm(config.sync_batchnorm, world, device)
    torch.manual_seed(config.seed)
    outputs = num_outputs(len(rows.class_names))
    built = build_model(config.model, outputs, pretrained=config.pretrained, weights=config.weights)
    frozen = freeze(built.model, config.freeze)
    preprocessing = Preprocessing(config.image_size, window=str(rows.window))
    run_config = RunConfig(
        model=config.model,
        num_outputs=outputs,
        class_names=rows.class_names,
        positive_class=rows.positive_class,
        preprocessing=preprocessing,
        initial_weights=built.weights,
        training=config.to_dict(),
        manifest_provenance=read_provenance(config.manifest),
    )
    if config.resume:
        check_resume(out, run_config)
    _log_setup(log, rows, built.weights, frozen, device, config, world)
    # Rank 0 takes the lock before the processes join: a folder in use stops it with its one
    # line, and torchrun stops the others while they wait to join.
    lock = folder_lock(out, "run folder") if world.is_main else nullcontext()
    with lock, process_group(world, device):
        if world.is_main:  # again: another run may have started meanwhile
            check_run_folder(out, config.resume)
        store = ImageStore(
            rows.files(),
            config.image_size,
            config.cache,
            config.cache_dir or out / "cache",
            processes=world.local_size,
        )
        decoded = _fill(store, config, world, on_progress)
        if config.cache != "none":
            log(f"cache: {config.cache}, {decoded} image(s) decoded at {config.image_size}px")
        if not config.resume and world.is_main:
            write_run_config(out, run_config)

        placement = Placement.create(
            device, preprocessing, amp=config.amp, channels_last=config.channels_last
        )
        fit = _set_up(config, rows, store, placement, built.model, world)
        on_cuda = device.type == "cuda"
        threads = model_threads(on_cuda, fit.train_loader.num_workers)
        if not on_cuda:  # the processes on this machine share its cores
            threads = max(1, threads // world.local_size)
        with torch_threads(threads):
            loop, history = _train(out, fit, config, rows, on_progress, on_epoch, log)
            barrier()  # the best weights are saved, and every process reloads them
            metrics = _evaluate_best(out, rows, store, fit, config, run_config, loop, on_progress)
        if world.is_main:
            plot_history(pd.DataFrame(history), out / CURVES_FILE)
    return TrainResult(out=out, metrics=metrics, history=pd.DataFrame(history))


def check_sync_batchnorm(sync_batchnorm: bool, world: World, device: torch.device) -> None:
    """``--sync-batchnorm`` needs GPUs where it does something (several processes): torch's
    SyncBatchNorm refuses CPU tensors."""
    if sync_batchnorm and world.distributed and device.type != "cuda":
        raise ConfigError(
            "--sync-batchnorm needs CUDA: torch's SyncBatchNorm runs on GPUs only; drop it to "
            "train on CPUs (each process then normalises its own share of a batch)"
        )


def _silent(_: str) -> None:
    """The log of processes other than rank 0."""


def _fill(
    store: ImageStore, config: TrainConfig, world: World, on_progress: ProgressCallback | None
) -> int:
    """Fill the image cache; returns how many images were decoded.

    Each process fills its own memory cache. A disk cache is shared: the processes decode a
    share each, wait for one another, and then find every image there (on a folder every node
    sees, as the run folder must be).
    """
    workers = fill_workers(config.workers, world.local_size)
    if config.cache != "disk" or not world.distributed:
        return store.fill(workers, on_progress)
    decoded = sum(gather(store.fill(workers, on_progress, share=world)))
    barrier()
    return decoded + store.fill(workers)


def _train(
    out: Path,
    fit: _Fit,
    config: TrainConfig,
    rows: Rows,
    on_progress: ProgressCallback | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    log: Callable[[str], None],
) -> tuple[LoopState, list[dict[str, Any]]]:
    """The epoch loop, from the start or after the last finished epoch; saves every epoch."""
    loop, history = LoopState(), []
    main = fit.world.is_main
    if config.resume:
        loop, history, processes = restore(out, fit.model, fit.optimizer, fit.schedule)
        log(f"resuming after epoch {loop.epoch} (best so far: epoch {loop.best_epoch})")
        if processes != fit.world.size:
            log(
                f"the run trained on {processes} process(es) and goes on on {fit.world.size}: "
                f"a step now takes {fit.world.size} x --batch-size images"
            )
        if loop.stopped_early:
            log("the run had stopped early; nothing left to train")
    for epoch in range(loop.epoch + 1, config.epochs + 1):
        if loop.stopped_early:
            break
        row = _epoch(fit, epoch, config, rows, on_progress)
        value = row[f"val_{config.select_metric}"]
        # every process records rank 0's row, so all of them stop (and pick) alike
        row["best"] = loop.record(epoch, value, config.select_metric, config.patience)
        if row["best"] and main:
            save_weights(fit.model, weights_path(out, BEST), epoch=epoch)
        history.append(row)
        if main:
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
    config: TrainConfig,
    rows: Rows,
    store: ImageStore,
    placement: Placement,
    model: torch.nn.Module,
    world: World,
) -> _Fit:
    """Loaders, loss, optimizer and schedule for ``model``, moved to the placement's device
    (and wrapped for DistributedDataParallel among several processes)."""
    on_cuda = placement.device.type == "cuda"
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
        world=world,
    )
    val_share = world.shard(len(val_rows))
    val_loader = make_loader(
        ImageDataset(store, val_rows[val_share], targets[val_rows[val_share]]),
        batch_size=config.batch_size,
        workers=workers,
        pin_memory=on_cuda,
    )
    weights = None
    if config.balance == "weights":
        weights = class_weights(targets[train_rows], len(rows.class_names))
    criterion = Criterion(rows.positive_class is not None, weights, config.label_smoothing)
    if world.distributed and config.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = placement.prepare(model)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    trainee = model
    if world.distributed:
        trainee = DistributedDataParallel(model, device_ids=[placement.device] if on_cuda else None)
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
        trainee=trainee,
        placement=placement,
        world=world,
        train_loader=train_loader,
        val_loader=val_loader,
        val_share=val_share,
        generator=generator,
        criterion=criterion.to(placement.device),
        optimizer=optimizer,
        schedule=schedule,
    )


def _epoch(
    fit: _Fit, epoch: int, config: TrainConfig, rows: Rows, on_progress: ProgressCallback | None
) -> dict[str, Any]:
    """Train one epoch and validate; the epoch's history row (without "best"), rank 0's on
    every process.

    Each epoch seeds its own shuffling and augmentation, so a resumed run sees the same data
    as an uninterrupted one. Processes share the shuffle's seed (they split one order) and
    draw augmentation and dropout from seeds of their own.
    """
    world = fit.world
    seed = config.seed * 100_003 + epoch
    torch.manual_seed(seed * world.size + world.rank)
    fit.generator.manual_seed(seed)
    lr = fit.schedule.lr
    loader = fit.train_loader
    images = len(loader) * config.batch_size if loader.drop_last else len(loader.sampler)
    stats = train_epoch(
        fit.trainee,
        loader,
        fit.optimizer,
        fit.criterion,
        fit.placement,
        fit.schedule,
        Phase(on_progress, f"epoch {epoch}/{config.epochs}", images),
    )
    if world.distributed:
        stats = _combined(gather(stats))
    validating = Phase(on_progress, "validating", len(fit.val_loader.dataset))
    probs, targets, val_loss = predict(fit.model, fit.val_loader, fit.placement, validating)
    probs, targets, val_loss = gather_predictions(fit.val_share, probs, targets, val_loss)
    row = None
    if world.is_main:
        metrics = classification_metrics(
            targets, probs, rows.class_names, positive=rows.positive_index
        )
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": val_loss,
            "val_accuracy": metrics["accuracy"],
            "val_balanced_accuracy": metrics["balanced_accuracy"],
            "val_auroc": metrics["auroc"],
            "images_per_s": stats.images_per_second,
            "seconds": stats.seconds,
        }
    row = share(row)
    fit.schedule.after_epoch(row["val_loss"])
    return row


def _combined(parts: list[EpochStats]) -> EpochStats:
    """One epoch's statistics over all processes: loss and accuracy over all their images,
    the time of the slowest."""
    images = sum(part.images for part in parts)
    return EpochStats(
        loss=sum(part.loss * part.images for part in parts) / max(images, 1),
        accuracy=sum(part.accuracy * part.images for part in parts) / max(images, 1),
        images=images,
        seconds=max(part.seconds for part in parts),
    )


def _save_epoch(out: Path, fit: _Fit, loop: LoopState, history: list[dict[str, Any]]) -> None:
    """The last weights, the resume state and the history, after every epoch."""
    save_weights(fit.model, weights_path(out, LAST), epoch=loop.epoch)
    state = {
        "loop": asdict(loop),
        "schedule": fit.schedule.state_dict(),
        "processes": fit.world.size,
    }
    save_resume_state(out / RESUME_FILE, fit.optimizer, state)
    with atomic_path(out / HISTORY_FILE) as temp:
        pd.DataFrame(history).to_csv(temp, index=False)


def _evaluate_best(
    out: Path,
    rows: Rows,
    store: ImageStore,
    fit: _Fit,
    config: TrainConfig,
    run_config: RunConfig,
    loop: LoopState,
    on_progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Reload the best checkpoint from disk (as a user would), predict val and test, choose the
    threshold on val, and write the evaluation. Several processes predict a share each; rank 0
    chooses and writes (the others return no metrics)."""
    model, _ = load_model(out, BEST, factory=config.model)  # the user's own --model
    splits = {"val": rows.split("val"), "test": rows.split("test")}
    total = sum(len(fit.world.shard(len(positions))) for positions in splits.values())
    results = predict_splits(
        fit.placement.prepare(model),
        rows,
        store,
        fit.placement,
        splits,
        batch_size=config.batch_size,
        workers=fit.val_loader.num_workers,
        phase=Phase(on_progress, "final evaluation", total),
    )
    if not fit.world.is_main:
        return {}
    threshold = validation_threshold(results, rows.positive_index, config.target_sensitivity)
    selection = {
        "metric": config.select_metric,
        "best_epoch": loop.best_epoch,
        "best_value": loop.best_value,
        "epochs_run": loop.epoch,
        "stopped_early": loop.stopped_early,
    }
    header = {
        "run": shown_path(out, config.show_paths),
        "model": config.model,
        "initial_weights": run_config.initial_weights,
        "manifest": shown_path(config.manifest, config.show_paths),
        "task": run_config.task,
        "selection": selection,
        "target_sensitivity": config.target_sensitivity,
    }
    saved = read_run_config(out)
    write_run_config(out, replace(saved, val_threshold=threshold, selection=selection))
    return write_evaluation(
        out,
        rows,
        results,
        val_threshold=threshold,
        header=header,
        provenance={"run": header["run"], "manifest": header["manifest"], "checkpoint": BEST},
        store=store,
        uncertainty=config.uncertainty,
    )


def _log_setup(
    log: Callable[[str], None],
    rows: Rows,
    weights: str,
    frozen: int,
    device: torch.device,
    config: TrainConfig,
    world: World,
) -> None:
    counts = rows.frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    for split in SPLITS:
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
    if world.distributed:
        backend = "NCCL" if device.type == "cuda" else "gloo"
        log(
            f"processes: {world.size} (DistributedDataParallel over {backend}), "
            f"{config.batch_size} images each per step, {world.size * config.batch_size} in all"
        )
