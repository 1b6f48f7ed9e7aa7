"""Scan and embed on a Ray cluster: the local path's per-file work run by Ray Data workers, its
results assembled, checkpointed and written by this process exactly as the local path does.

Ray is an optional extra (``pip install 'fracture-curate[distributed]'``), imported by the
functions here only: ``import fracture_curate`` and the local path never load it.

Files are read where they are: every worker opens ``ROOT/path`` itself, so the dataset folder
must be visible at the same absolute path on every node (a shared filesystem), and this package,
with the embedding weights, installed on each. A worker that cannot see the folder says so and
the run stops with its words, rather than recording the files it could not open as unreadable.

Scan: the per-file function (:func:`fracture_curate.scan.inspect_file`) runs in Ray tasks over
blocks of paths, and its rows come back pickled, each with its own keys and Python types (a
DICOM row has columns the others lack; an integer column with a gap would turn to floats in
Arrow), so that :func:`fracture_curate.scan.scan_dataset` builds the same table from the same
dicts as locally. Embed: ``map_batches`` with one actor per GPU (else one per CPU), each holding
one model; on GPUs, CPU tasks decode the files first, as DataLoader workers feed the GPU locally.
The vectors come back to this process, which saves them in the same resumable parts
(:class:`fracture_curate.embed.PartStore`) as they arrive.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import socket
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fracture_curate.dataset_files import ScannedFile
from fracture_curate.dicom import Window
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.model_input import Failure, ImageFiles

if TYPE_CHECKING:
    from fracture_curate.embed import EmbedConfig, ModelRun
    from fracture_curate.embedder import EmbeddedBatch

#: What a user installs to get Ray.
RAY_EXTRA = "pip install 'fracture-curate[distributed]'"
#: ``--ray auto``: the running cluster, else a local instance.
AUTO = "auto"
#: Seconds an address is given to accept a connection. ray.init itself waits two minutes on
#: an address where nothing listens, then exits the process (measured with Ray 2.60).
CONNECT_TIMEOUT = 5.0
#: Files per block of a scan: a task's share, and how often its rows come back.
SCAN_BLOCK_FILES = 256
#: Images per block of an embedding run, at least (several batches on a GPU): how often
#: vectors come back to be saved; about six seconds of one CPU actor's work at 224 px.
EMBED_BLOCK_IMAGES = 256
#: Blocks per worker at least, where the files are few: the work spreads over every worker.
BLOCKS_PER_WORKER = 4

#: Ray Data's own logging and progress bars, silenced while a run of ours executes: this
#: process reports progress through its callback (``enable_progress_bars`` and its kin).
_QUIET_CONTEXT = {
    "enable_progress_bars": False,
    "print_on_execution_start": False,
    "enable_auto_log_stats": False,
}
_RAY_DATA_LOG_LEVEL = "RAY_DATA_LOG_LEVEL"


class RayError(CurateError):
    """Ray is missing, a cluster does not answer, or a worker cannot do its share."""


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a RayError that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise RayError(f"--ray needs Ray, an optional extra: {RAY_EXTRA}") from error
    return ray


@dataclass(frozen=True)
class RayCluster:
    """The Ray cluster this process is connected to: the scan's file mapper and the embed
    stage's model runner on it (see :func:`ray_cluster`)."""

    description: str  #: one line: which cluster, how it was reached, its CPUs and GPUs

    def map_files(
        self, function: Callable[[str], dict[str, Any]], paths: list[str], root: Path
    ) -> Iterator[dict[str, Any]]:
        """``function`` over ``paths`` (relative to ``root``) in Ray tasks; yields each file's
        row as its block comes back, blocks in any order (a
        :data:`fracture_curate.scan.FileMapper`)."""
        if not paths:
            return
        ray = require_ray()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        frame = pd.DataFrame({"path": paths})
        blocks = _blocks(frame, SCAN_BLOCK_FILES, BLOCKS_PER_WORKER * cpus)

        def build() -> Any:
            return ray.data.from_pandas(blocks).map_batches(
                _inspect_batch,
                fn_kwargs={"function": function, "root": str(root)},
                batch_size=None,
                batch_format="numpy",
            )

        for batch in _run(build):
            for row in batch["row"]:
                yield pickle.loads(row)

    def embed_files(
        self,
        files: list[ScannedFile],
        config: EmbedConfig,
        *,
        device: str,
        batch_size: int | None,
        workers: int | None,
    ) -> ModelRun:
        """Start the embedder on ``files`` in Ray actors (a
        :class:`fracture_curate.embed.FileEmbedder`); returns once the first batch is back, when
        the actors' weights and device are known.

        Args:
            files: the files to embed, all under one root, decoded with one window.
            config: what decides the vectors; each actor loads its weights from its own
                installation (never downloaded) and checks their SHA-256 against this one's.
            device: "auto" (one GPU per actor when the cluster has GPUs, else CPUs), "cpu" or
                "cuda"; Ray assigns the GPUs, so "cuda:N" is refused.
            batch_size: images per model call (default: 4 on a CPU, 256 on a GPU).
            workers: actors, each holding one model (default: one per GPU, else one per CPU).
        """
        from fracture_curate.embed import ModelRun
        from fracture_curate.embedder import default_batch_size
        from fracture_curate.weights import weights_sha256

        ray = require_ray()
        roots, windows = {file.root for file in files}, {file.window for file in files}
        if len(roots) != 1 or len(windows) != 1:
            raise ValueError("files to embed on Ray must share one root and one window")
        if device not in (AUTO, "cpu", "cuda"):
            raise ConfigError(
                f"with --ray, pass --device auto, cpu or cuda (Ray assigns GPUs), not {device!r}"
            )
        if workers == 0:
            raise ConfigError(
                "--workers 0 embeds in this process; with --ray give 1 or more actors"
            )
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if device == "cuda" and gpus == 0:
            raise ConfigError("--device cuda was asked for but the Ray cluster has no GPU")
        on_gpu = device == "cuda" or (device == AUTO and gpus > 0)
        batch_size = batch_size or default_batch_size(on_gpu)
        actors = workers or max(1, gpus if on_gpu else cpus)
        frame = pd.DataFrame(
            {
                "index": np.arange(len(files), dtype=np.int64),
                "path": [file.path for file in files],
                "image_id": [file.image_id for file in files],
                "size": np.array([file.size for file in files], dtype=np.int64),
            }
        )
        blocks = _blocks(
            frame,
            max(EMBED_BLOCK_IMAGES, 4 * batch_size),
            min(BLOCKS_PER_WORKER * actors, math.ceil(len(files) / batch_size)),
        )
        reading = {
            "root": str(next(iter(roots))),
            "window": str(next(iter(windows))),
            "image_size": config.image_size,
            "resize": config.resize,
        }
        model = {
            "config": config,
            "weights_sha256": weights_sha256(config.weights),
            "device": "cuda" if on_gpu else "cpu",
        }

        def build() -> Any:
            dataset = ray.data.from_pandas(blocks)
            if on_gpu:  # CPU tasks decode, as DataLoader workers do for a local GPU
                dataset = dataset.map_batches(
                    _decode_batch, fn_kwargs=reading, batch_size=None, batch_format="numpy"
                )
            return dataset.map_batches(
                _ModelActor,
                fn_constructor_kwargs=model | {"reading": None if on_gpu else reading},
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(blocks))),
                num_gpus=1 if on_gpu else None,
                num_cpus=None if on_gpu else 1,
            )

        batches = _run(build)
        first = next(batches)  # the models are loaded: their weights' source is known
        return ModelRun(
            batches=_embedded_batches(first, batches),
            weights_source=str(first["weights_source"][0]),
            device=f"Ray, {min(actors, len(blocks))} actor(s): {first['device'][0]}",
        )


@contextmanager
def ray_cluster(address: str | None) -> Iterator[RayCluster | None]:
    """Connect to Ray for the length of a run; None without an address (the local path).

    ``address`` is "auto" (the running cluster: ``RAY_ADDRESS``, the last ``ray start`` on
    this machine, or a Ray instance found running here; else a new local instance), or a
    cluster's address, ``host:port`` or ``ray://host:port``. An address is first given
    CONNECT_TIMEOUT seconds to accept a connection. A process already connected (a library
    user, the tests) keeps its connection. Ray is shut down afterwards only if connected here.
    """
    if address is None:
        yield None
        return
    ray = require_ray()
    address = address.strip()
    explicit = address != AUTO
    if explicit:
        _check_reachable(address, "--ray")
    if ray.is_initialized():
        yield RayCluster(f"Ray: the instance this process is connected to ({_resources(ray)})")
        return
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if not address.startswith("ray://"):
        options["include_dashboard"] = False
    if explicit:
        where = f"connected to the cluster at {address}"
    else:
        address, where = _find_cluster()
    try:
        if address is None:
            ray.init(**options)
        else:
            ray.init(address=address, **options)
    except Exception as error:  # ray.init raises many types; each means "not connected"
        target = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayError(f"cannot connect to {target}: {_first_line(error)}") from error
    try:
        yield RayCluster(f"Ray: {where} ({_resources(ray)})")
    finally:
        ray.shutdown()


def _find_cluster() -> tuple[str | None, str]:
    """Where ``--ray auto`` connects (None: start a local instance), and the words for it."""
    from ray._private.services import get_ray_address_from_environment

    from_environment = bool(os.environ.get("RAY_ADDRESS"))
    try:
        found = get_ray_address_from_environment(AUTO, None)
    except ConnectionError:
        return None, "no cluster running; started a local Ray instance"
    if from_environment:
        _check_reachable(found, "RAY_ADDRESS")
    elif not _reachable(found):  # recorded by a `ray start` that is gone
        return None, f"no cluster answers at {found}; started a local Ray instance"
    return found, f"connected to the running cluster at {found}"


def _check_reachable(address: str, given_by: str) -> None:
    """A RayError unless ``address`` (``host:port`` or ``ray://host:port``) accepts a
    connection within CONNECT_TIMEOUT seconds."""
    if not _reachable(address):
        raise RayError(
            f"no Ray cluster answers at {address} (given by {given_by}); start one with "
            "`ray start --head` and pass the address it prints, or --ray auto"
        )


def _reachable(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayError(
            f"the Ray address {address!r} is not host:port or ray://host:port; or pass --ray auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError:
        return False
    return True


def _resources(ray: ModuleType) -> str:
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    return f"{cpus} CPU{'s' * (cpus != 1)}, " + (
        f"{gpus} GPU{'s' * (gpus != 1)}" if gpus else "no GPU"
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _blocks(frame: pd.DataFrame, rows_per_block: int, at_least: int) -> list[pd.DataFrame]:
    """``frame`` cut into consecutive blocks of at most ``rows_per_block`` rows, and into
    ``at_least`` blocks where it has the rows; none when it has none."""
    if frame.empty:
        return []
    count = min(len(frame), max(math.ceil(len(frame) / rows_per_block), at_least, 1))
    size = math.ceil(len(frame) / count)
    return [frame.iloc[start : start + size] for start in range(0, len(frame), size)]


def _run(build: Callable[[], Any]) -> Generator[dict[str, np.ndarray], None, None]:
    """Build a dataset and yield its output blocks as they come back, Ray Data's own progress
    bars and logging silenced meanwhile. The first problem a worker reports (a folder it
    cannot see, weights it cannot load) stops the run as a RayError. Closing the generator
    stops the run and frees its workers."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = {name: getattr(context, name) for name in _QUIET_CONTEXT}
    logger = logging.getLogger("ray.data")
    saved_level, level = logger.level, os.environ.get(_RAY_DATA_LOG_LEVEL)
    for name, value in _QUIET_CONTEXT.items():
        setattr(context, name, value)
    # Ray Data sets its logger's level when imported and again, from this variable, when
    # some runs start; a level the user set is kept.
    os.environ[_RAY_DATA_LOG_LEVEL] = level or "ERROR"
    logger.setLevel(level or "ERROR")
    try:
        for batch in build().iter_batches(batch_size=None, batch_format="numpy"):
            problems = [str(problem) for problem in batch["problem"] if problem]
            if problems:
                raise RayError(problems[0])
            yield batch
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        logger.setLevel(saved_level)
        if level is None:
            os.environ.pop(_RAY_DATA_LOG_LEVEL, None)


def _embedded_batches(
    first: dict[str, np.ndarray], rest: Generator[dict[str, np.ndarray], None, None]
) -> Generator[EmbeddedBatch, None, None]:
    """The model actors' output blocks, ``first`` then ``rest``, as the local embedder's
    batches: (indices embedded, their vectors, failures by index)."""
    try:
        for block in itertools.chain([first], rest):
            ok = block["status"] == "ok"
            failures: dict[int, Failure] = {
                int(index): (str(status), str(reason))
                for index, status, reason in zip(
                    block["index"][~ok], block["status"][~ok], block["reason"][~ok], strict=True
                )
            }
            yield block["index"][ok].tolist(), block["embedding"][ok], failures
    finally:
        rest.close()


def _worker() -> str:
    return f"the Ray worker on {socket.gethostname()}"


def _invisible(root: str) -> str:
    """Why a worker cannot read the dataset, or "" when it sees the folder."""
    if os.path.isdir(root):
        return ""
    return (
        f"{_worker()} cannot see the dataset folder {root}: every Ray node must see it at the "
        "same path (a shared filesystem)"
    )


def _inspect_batch(
    batch: dict[str, np.ndarray], function: Callable[[str], dict[str, Any]], root: str
) -> dict[str, np.ndarray]:
    """A Ray task: the scan rows of a block of paths, pickled (see the module's docstring)."""
    problem = _invisible(root)
    rows = [] if problem else [pickle.dumps(function(str(path))) for path in batch["path"]]
    count = len(rows) or 1
    return {
        "row": np.array(rows or [b""], dtype=object),
        "problem": np.full(count, problem, dtype=object),
    }


def _read_files(batch: dict[str, np.ndarray], reading: dict[str, Any]) -> ImageFiles:
    root, window = Path(reading["root"]), Window.parse(reading["window"])
    return ImageFiles(
        [
            ScannedFile(root, str(path), str(image_id), int(size), window)
            for path, image_id, size in zip(
                batch["path"], batch["image_id"], batch["size"], strict=True
            )
        ],
        reading["image_size"],
        reading["resize"],
    )


def _decode_batch(batch: dict[str, np.ndarray], **reading: Any) -> dict[str, np.ndarray]:
    """A Ray task feeding GPU actors: a block of files decoded and resized, as
    :class:`~fracture_curate.model_input.ImageFiles` does locally; a file that fails keeps a
    blank image and its failure."""
    count, side = len(batch["index"]), reading["image_size"]
    images = np.zeros((count, side, side, 3), dtype=np.uint8)
    status = np.full(count, "ok", dtype=object)
    reason = np.full(count, "", dtype=object)
    problem = _invisible(reading["root"])
    if not problem:
        files = _read_files(batch, reading)
        for position in range(count):
            _, pixels, failure = files[position]
            if failure is None:
                images[position] = pixels
            else:
                status[position], reason[position] = failure
    return {
        "index": batch["index"],
        "image": images,
        "status": status,
        "reason": reason,
        "problem": np.full(count, problem, dtype=object),
    }


class _ModelActor:
    """A Ray actor holding one embedder: it embeds batches of decoded images (GPU actors), or
    reads, decodes and embeds them itself on one thread (CPU actors, as the local CPU path's
    workers do). A problem loading the model is reported with every batch, not raised: the
    driver stops with its words, not with Ray's traceback of a dead actor."""

    def __init__(
        self,
        config: EmbedConfig,
        weights_sha256: str | None,
        device: str,
        reading: dict[str, Any] | None,
    ) -> None:
        import torch

        from fracture_curate.embed import LAYERS
        from fracture_curate.embedder import load_embedder
        from fracture_curate.runtime import resolve_device
        from fracture_curate.weights import weights_sha256 as sha256_of

        self.reading, self.dim, self.problem = reading, LAYERS[config.layer], ""
        self.model: Any = None
        self.weights_source = ""
        self.device_name = f"{device} ({'bf16' if device == 'cuda' else 'fp32'})"
        try:
            self.device = resolve_device(device)
            if self.device.type == "cpu":
                torch.set_num_threads(1)  # one actor per CPU
            self.model, self.weights_source = load_embedder(
                config.weights, config.layer, self.device, allow_download=False
            )
            if sha256_of(config.weights) != weights_sha256:
                raise CurateError(
                    f"its weights {config.weights} are not the driver's (another SHA-256); "
                    "install the same file on every node"
                )
        except CurateError as error:
            self.problem = f"{_worker()}: {error}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fracture_curate.embedder import forward_batch
        from fracture_curate.model_input import collate

        count = len(batch["index"])
        embedding = np.zeros((count, self.dim), dtype=np.float32)
        status = np.full(count, "ok", dtype=object)
        reason = np.full(count, "", dtype=object)
        problem = self._problem(batch)
        if problem:
            status[:] = "problem"
        else:
            indices, vectors, failures = forward_batch(
                self.model, collate(self._items(batch)), self.device
            )
            if indices:
                embedding[indices] = vectors
            for position, (failed_status, failed_reason) in failures.items():
                status[position], reason[position] = failed_status, failed_reason
        return {
            "index": batch["index"],
            "embedding": embedding,
            "status": status,
            "reason": reason,
            "weights_source": np.full(count, self.weights_source, dtype=object),
            "device": np.full(count, self.device_name, dtype=object),
            "problem": np.full(count, problem, dtype=object),
        }

    def _problem(self, batch: dict[str, np.ndarray]) -> str:
        """This actor's problem, the decoding task's, or the reading's; "" when none."""
        if self.problem:
            return self.problem
        if self.reading is not None:
            return _invisible(self.reading["root"])
        return next((str(problem) for problem in batch["problem"] if problem), "")

    def _items(self, batch: dict[str, np.ndarray]) -> list[tuple[int, Any, Failure | None]]:
        """The batch's images as :func:`~fracture_curate.model_input.collate` takes them."""
        count = len(batch["index"])
        if self.reading is not None:
            files = _read_files(batch, self.reading)
            return [files[position] for position in range(count)]
        return [
            (position, batch["image"][position], None)
            if batch["status"][position] == "ok"
            else (position, None, (str(batch["status"][position]), str(batch["reason"][position])))
            for position in range(count)
        ]
