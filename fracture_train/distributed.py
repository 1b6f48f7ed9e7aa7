"""Training on several processes under torchrun: the process group, the one process that writes,
and predictions made in shares by every process, gathered back into the split's order.

``torchrun --nproc_per_node N -m fracture_train.cli ...`` starts N copies of ``train``, telling
each its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``). Without those variables, or with a world of one process, nothing here
starts a process group and a run is exactly the single-process run. CUDA processes talk over
NCCL, each on the GPU of its ``LOCAL_RANK``; CPU processes over gloo.

torch is imported where it is needed, so that the command line can ask :func:`launched` for the
rank without paying for torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fracture_curate.errors import ConfigError
from fracture_curate.runtime import check_device_name, resolve_device

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: What torchrun sets in every process it starts.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (alone: rank 0 of 1)."""

    rank: int = 0  #: among all processes, on every node
    size: int = 1  #: how many processes train together
    local_rank: int = 0  #: among this node's processes: the GPU this one uses
    local_size: int = 1  #: processes on this node, sharing its cores

    @property
    def distributed(self) -> bool:
        """Whether other processes train with this one."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0, the one that writes files and prints."""
        return self.rank == 0

    def shard(self, count: int) -> np.ndarray:
        """This process's share of ``count`` items: every ``size``-th from ``rank`` on.

        Shares are disjoint and together hold every item exactly once (unlike torch's
        DistributedSampler, which pads them to one length with repeated items): what is
        evaluated this way is counted once.
        """
        return np.arange(self.rank, count, self.size)


def launched() -> World:
    """The world torchrun describes in the environment; alone when it describes none."""
    if not all(name in os.environ for name in LAUNCH_VARIABLES):
        return World()
    try:
        values = {name: int(os.environ[name]) for name in LAUNCH_VARIABLES}
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", values["WORLD_SIZE"]))
    except ValueError as error:
        raise ConfigError(f"torchrun's environment is not numbers: {error}") from None
    return World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], local_size)


def is_main_process() -> bool:
    """Whether this process is the one that prints (rank 0, or the only one)."""
    try:
        return launched().is_main
    except ConfigError:  # said where the run starts, by every process
        return True


def device_for(world: World, device: str) -> torch.device:
    """The device of this process: ``device`` alone; under torchrun, with CUDA ("auto" where
    there is one, or "cuda"), the GPU of its local rank."""
    import torch

    if not world.distributed:
        return resolve_device(device)
    if check_device_name(device).startswith("cuda:"):
        raise ConfigError(
            f"--device {device} under torchrun: each process takes the GPU of its local rank; "
            "pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    chosen = resolve_device(device)
    if chosen.type != "cuda":
        return chosen
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {world.local_rank} has no GPU: this node shows "
            f"{torch.cuda.device_count()}; start at most that many processes per node"
        )
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the other processes of the run for the duration, when there are any.

    ``world`` is :func:`launched`'s, ``device`` :func:`device_for`'s. The backend is NCCL on
    CUDA and gloo on a CPU. A group that the caller started already is used as it is, and left
    running.
    """
    import torch
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def current() -> World:
    """The world of the running process group; alone when none runs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    node = launched()
    return World(dist.get_rank(), dist.get_world_size(), node.local_rank, node.local_size)


def barrier() -> None:
    """Wait until every process gets here (no-op alone)."""
    import torch.distributed as dist

    if current().distributed:
        dist.barrier()


def gather(value: T) -> list[T]:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    import torch.distributed as dist

    world = current()
    if not world.distributed:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def share(value: T) -> T:
    """Rank 0's ``value`` on every process, so all of them act on one decision."""
    import torch.distributed as dist

    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_predictions(
    indices: np.ndarray, probs: np.ndarray, targets: np.ndarray, loss: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """The whole split's predictions, on every process, from each process's share.

    Args:
        indices: where this process's rows stand in the split (``World.shard``); together the
            processes' indices must hold each row exactly once, in any order.
        probs: this process's N x K probabilities, in the order of ``indices``.
        targets: its N class indices.
        loss: its mean loss over its N rows (NaN for none).

    Returns the probabilities and targets of every row in split order, and the mean loss over
    all of them (each process's mean weighted by its rows, as one process would compute it).
    Alone, the inputs come back as they are.
    """
    if not current().distributed:
        return probs, targets, loss
    parts = [part for part in gather((indices, probs, targets, loss)) if len(part[0])]
    if not parts:
        return probs, targets, loss
    order = np.concatenate([part[0] for part in parts])
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise RuntimeError("the processes' shares overlap or leave rows out")  # a bug
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    counts = [len(part[0]) for part in parts]
    total = sum(part[3] * count for part, count in zip(parts, counts, strict=True))
    return (
        np.concatenate([part[1] for part in parts])[position],
        np.concatenate([part[2] for part in parts])[position],
        total / len(order) if math.isfinite(total) else math.nan,
    )
