"""How work is spread over the machine: the device, intra-op threads, worker processes and the
memory allocator the CPU models run on.

torch is imported where it is needed, not with this module, so that a command with nothing to
compute does not pay the seconds torch takes to load.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fracture_curate.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: glibc's mallopt parameters (malloc.h) and Linux's prctl option (linux/prctl.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PR_SET_PDEATHSIG = 1
#: The largest mmap threshold glibc accepts on 64-bit systems (half its heap size).
_MMAP_THRESHOLD_MAX = 32 << 20


def check_device_name(device: str) -> str:
    """``device`` when it names one (auto, cpu, cuda or cuda:N), else a ConfigError."""
    kind, _, index = device.partition(":")
    if device != "auto" and (kind not in ("cpu", "cuda") or (index and not index.isdigit())):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a fallback."""
    import torch

    if check_device_name(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


def model_threads(on_cuda: bool, workers: int) -> int:
    """Intra-op threads for the model: on a CPU, the cores the loader processes leave free.

    Oversubscribed cores make PyTorch's thread pool spin: forward passes ran up to 100 times
    slower with a decoding process competing for two cores.
    """
    import torch

    return torch.get_num_threads() if on_cuda else max(1, (os.cpu_count() or 1) - workers)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, restoring the previous setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def core_workers() -> int:
    """One worker process per core, at most 16."""
    return min(os.cpu_count() or 1, 16)


def default_workers(on_cuda: bool) -> int:
    """Decoding processes feeding a model in the main process: one per core on CUDA, none on a
    CPU-only machine, where the model needs every core and decoding between batches measured
    fastest (benchmarks/README.md)."""
    return core_workers() if on_cuda else 0


def retain_freed_memory() -> bool:
    """Keep freed memory in the process (glibc only) instead of handing it back to the system.

    A CPU forward pass frees and reallocates megabytes of activations per layer. glibc's default
    maps large blocks fresh or trims the heap after each free, so every pass page-faults its
    activations back in: MobileNetV2 ran at 32 to 89 images/s on one core depending on the
    heap's history, and at 84 steadily with these settings. Returns whether they took effect.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform == "linux" else None
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    )


def die_with_parent(parent_pid: int) -> None:
    """Have Linux kill this (worker) process when its parent dies, even by SIGKILL.

    PyTorch's loader workers notice a dead parent, but then hang for ever at exit writing to a
    result pipe nobody reads, keeping their memory.
    """
    if sys.platform != "linux":
        return
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request was made
        os._exit(1)


def worker_init_fn(*, retain_memory: bool = False) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` for loaders made in this process: each worker dies with
    it, and with ``retain_memory`` keeps its freed memory (for workers that run a model)."""
    return functools.partial(_init_worker, os.getpid(), retain_memory)


def _init_worker(parent_pid: int, retain_memory: bool, worker_id: int) -> None:
    die_with_parent(parent_pid)
    if retain_memory:
        retain_freed_memory()
