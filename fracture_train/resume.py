"""Resuming a run: what must match for a run to go on, and restoring the model, optimizer,
schedule and loop state after the last finished epoch."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from fracture_curate.params import option_name
from fracture_curate.schema import HISTORY_FILE
from fracture_train.checkpoint import (
    LAST,
    RESUME_FILE,
    CheckpointError,
    RunConfig,
    load_resume_state,
    read_run_config,
    weights_epoch,
    weights_path,
)
from fracture_train.config import RESUMABLE, TrainConfig
from fracture_train.engine import Schedule
from fracture_train.selection import LoopState


def check_run_folder(out: Path, resume: bool) -> None:
    """A new run needs a folder without a finished epoch; a resumed one needs one with."""
    has_epochs = (out / RESUME_FILE).exists()
    if resume and not has_epochs:
        raise CheckpointError(f"--resume: {out} holds no run to resume ({RESUME_FILE} missing)")
    if not resume and has_epochs:
        raise CheckpointError(f"{out} already holds a run; pass --resume or choose another --out")


def check_resume(out: Path, run_config: RunConfig) -> None:
    """The resumed run must have the same classes, model and training options."""
    saved = read_run_config(out)
    if saved.class_names != run_config.class_names:
        raise CheckpointError(
            f"--resume: the manifest's classes {run_config.class_names} differ from the "
            f"run's {saved.class_names}"
        )
    old, new = saved.training, run_config.training
    changed = [
        f"{option_name(name)} {old.get(name)!r} -> {new[name]!r}"
        for name in (field.name for field in fields(TrainConfig))
        if name not in RESUMABLE and old.get(name) != new[name]
    ]
    if changed:
        raise CheckpointError(
            "--resume needs the run's own options; changed: " + "; ".join(changed)
        )


def restore(
    out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule
) -> tuple[LoopState, list[dict[str, Any]], int]:
    """Load the last weights into ``model``, the optimizer's and the schedule's state, and return
    the loop state, the history so far and how many processes trained the run (torchrun).

    Every process of a run restores the same files, so all of them go on from one state (the
    sampler's order is drawn from the seed and the epoch, so it goes on alike too).
    """
    state = load_resume_state(out / RESUME_FILE, optimizer)
    loop = LoopState(**state["loop"])
    if weights_epoch(weights_path(out, LAST)) != loop.epoch:
        raise CheckpointError(
            f"{out}: last.safetensors and {RESUME_FILE} are from different epochs "
            "(the run was killed while saving); start a new run"
        )
    model.load_state_dict(load_file(weights_path(out, LAST)))
    schedule.load_state_dict(state["schedule"])
    history = pd.read_csv(out / HISTORY_FILE)
    history = history[history["epoch"] <= loop.epoch]
    return loop, history.to_dict("records"), int(state.get("processes", 1))
