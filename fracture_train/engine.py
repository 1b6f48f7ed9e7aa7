"""One epoch of training, one pass of prediction, and what they need: the placement of batches
(normalisation on the device, bf16 autocast on CUDA, channels_last), the loss, the optimizer and
the learning-rate schedule."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import timm.optim
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fracture_curate.errors import ConfigError
from fracture_curate.model_input import Preprocessing, normalisation
from fracture_curate.progress import Phase
from fracture_train.config import SCHEDULES

LOSS_EVERY = 10  #: batches between read-backs of the running loss (each one syncs the GPU)


@dataclass(frozen=True)
class Placement:
    """Where and how batches run: uint8 images in, normalised floats on the device out."""

    device: torch.device
    mean: torch.Tensor  #: 1 x 3 x 1 x 1, scaled to 0-255, on the device
    std: torch.Tensor
    amp: bool  #: bf16 autocast (CUDA only)
    channels_last: bool

    @classmethod
    def create(
        cls, device: torch.device, preprocessing: Preprocessing, *, amp: bool, channels_last: bool
    ) -> Placement:
        """A placement on ``device``; AMP is used only where it helps (CUDA), where cuDNN also
        picks the fastest kernels for the (fixed) input shape."""
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        mean, std = normalisation(preprocessing.mean, preprocessing.std, device)
        return cls(
            device=device,
            mean=mean,
            std=std,
            amp=amp and device.type == "cuda",
            channels_last=channels_last,
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device, in channels_last memory when asked."""
        if self.channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W uint8 (any device) to normalised float32 on the device."""
        images = images.to(self.device, non_blocking=True).float()
        images = (images - self.mean) / self.std
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA when AMP is on; a no-op elsewhere."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


class Criterion(nn.Module):
    """BCE on one logit (two classes) or cross-entropy, with optional class weights (a
    weighted mean over the batch) and label smoothing."""

    def __init__(
        self,
        binary: bool,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.binary = binary
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.binary:
            return F.cross_entropy(
                logits, targets, weight=self.class_weights, label_smoothing=self.label_smoothing
            )
        soft = targets.float() * (1 - self.label_smoothing) + self.label_smoothing / 2
        losses = F.binary_cross_entropy_with_logits(logits[:, 0], soft, reduction="none")
        if self.class_weights is None:
            return losses.mean()
        weights = self.class_weights[targets]
        return (losses * weights).sum() / weights.sum()


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * n_c)``: every class counts as much in the loss."""
    counts = np.bincount(targets, minlength=num_classes)
    return torch.tensor(len(targets) / (num_classes * counts), dtype=torch.float32)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """N x K class probabilities: ``[1 - p, p]`` for one logit, softmax otherwise."""
    logits = logits.float()
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (Nesterov momentum 0.9) over the trainable parameters; biases and
    norm layers get no weight decay (timm's optimizer factory)."""
    return timm.optim.create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay)


class Schedule:
    """The learning rate over training: per-step cosine after a linear warmup, a step decay
    every N epochs, or a reduction when the validation loss plateaus."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        *,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        step_every: int = 10,
        factor: float = 0.1,
        plateau_patience: int = 2,
    ) -> None:
        self.name = name
        self.optimizer = optimizer
        if name == "cosine":
            warmup = round(warmup_epochs * steps_per_epoch)
            total = max(epochs * steps_per_epoch, warmup + 1)
            self.scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, warmup, total)
            )
        elif name == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_every, gamma=factor)
        elif name == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=factor, patience=plateau_patience
            )
        else:
            raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def after_step(self) -> None:
        """Called after every optimizer step."""
        if self.name == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        """Called after every epoch's validation."""
        if self.name == "step":
            self.scheduler.step()
        elif self.name == "plateau":
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (JSON-serialisable)."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        self.scheduler.load_state_dict(state)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear from 1/warmup to 1 over ``warmup`` steps, then cosine down to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except batch norms whose parameters are frozen: their running
    statistics stay as loaded."""
    model.train()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, _BatchNorm) and weight is not None and not weight.requires_grad:
            module.eval()


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch did."""

    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else math.nan


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    placement: Placement,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch; returns the loss and the logits (detached)."""
    inputs = placement.inputs(images)
    targets = targets.to(placement.device, non_blocking=True)
    with placement.autocast():
        logits = model(inputs)
    loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    placement: Placement,
    schedule: Schedule | None = None,
    phase: Phase | None = None,
) -> EpochStats:
    """Train one pass over ``batches``, advancing ``phase`` by each batch's images.

    The running loss is read back (a device sync) and shown only every ``LOSS_EVERY`` batches.
    """
    set_train_mode(model)
    start = time.perf_counter()
    total_loss = torch.zeros((), device=placement.device)
    correct = torch.zeros((), device=placement.device, dtype=torch.long)
    seen = 0
    for step, (images, targets) in enumerate(batches, start=1):
        targets = targets.to(placement.device, non_blocking=True)
        loss, logits = train_step(model, images, targets, optimizer, criterion, placement)
        if schedule is not None:
            schedule.after_step()
        total_loss += loss * len(targets)
        correct += (probabilities(logits).argmax(1) == targets).sum()
        seen += len(targets)
        if phase is not None:
            running = f"loss {float(total_loss) / seen:.3f}" if step % LOSS_EVERY == 1 else None
            phase.advance(len(targets), running)
    loss, accuracy = float(total_loss) / max(seen, 1), float(correct) / max(seen, 1)
    return EpochStats(loss, accuracy, seen, time.perf_counter() - start)


@torch.inference_mode()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    placement: Placement,
    phase: Phase | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities (N x K float64), targets and the mean plain loss over ``batches``;
    ``phase`` advances by each batch's images.

    Runs in float32 even where training uses bf16: reported probabilities should not carry
    bf16 rounding (which also ties scores and so moves AUROC).
    """
    model.eval()
    probs, targets, losses = [], [], []
    for images, batch_targets in batches:
        logits = model(placement.inputs(images))
        batch_targets = batch_targets.to(placement.device)
        loss = Criterion(binary=logits.shape[1] == 1)(logits, batch_targets)
        losses.append(float(loss) * len(batch_targets))
        probs.append(probabilities(logits).double().cpu().numpy())
        targets.append(batch_targets.cpu().numpy())
        if phase is not None:
            phase.advance(len(batch_targets))
    if not probs:
        return np.empty((0, 0)), np.empty(0, dtype=np.int64), math.nan
    count = sum(len(t) for t in targets)
    return np.concatenate(probs), np.concatenate(targets), sum(losses) / count
