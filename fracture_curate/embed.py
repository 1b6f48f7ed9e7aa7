"""``curate embed``: MobileNetV2 ImageNet embeddings of every kept image, keyed by content hash.

Work is saved in parts as it goes (``DIR/.embeddings.parts/``), so a killed run loses at most one
part; the next run embeds only what is missing and consolidates everything into
``DIR/embeddings.parquet``. What is missing is worked out before torch, the weights or the model
are loaded (:mod:`fracture_curate.embedder`), so a run with nothing to embed takes a second.
The model runs on this machine, or on a Ray cluster (:mod:`fracture_curate.distributed`); the
parts and the manifest are written here either way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from fracture_curate.dataset_files import ScannedFile, scanned_files
from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.manifest import (
    ManifestError,
    dataset_root,
    folder_lock,
    manifest_path,
    read_manifest,
    read_provenance,
    recorded_window,
    write_manifest,
)
from fracture_curate.model_input import RESIZE_MODES, Failure, ImageFiles
from fracture_curate.params import Constraints, Interval, Options, check_params
from fracture_curate.progress import Phase, ProgressCallback
from fracture_curate.runtime import check_device_name, core_workers, resolve_device
from fracture_curate.schema import EMBEDDING_COLUMNS
from fracture_curate.weights import IMAGENET, weights_sha256

if TYPE_CHECKING:
    from fracture_curate.embedder import EmbeddedBatch

MODEL = "torchvision.mobilenet_v2"
#: Embedding width of each layer that can be read.
LAYERS = {"pool": 1280, "logits": 1000}
#: The parameters that decide an embedding's value (the window: of a DICOM's pixels); where the
#: weights were found does not.
IDENTITY_KEYS = ("model", "layer", "image_size", "resize", "weights_sha256", "dim", "window")
PARTS_FOLDER = ".embeddings.parts"


@dataclass(frozen=True)
class EmbedConfig:
    """What determines an embedding; runs with different settings never mix their vectors."""

    layer: str = "pool"  #: "pool" (1280-d global-pooled features) or "logits" (1000-d)
    image_size: int = 224
    resize: str = "stretch"  #: "stretch" the whole image, or "crop" (resize then centre-crop)
    weights: str = IMAGENET  #: "imagenet", "random" (tests) or a path to a state dict

    CONSTRAINTS: ClassVar[Constraints] = {
        "layer": Options(tuple(LAYERS)),
        "image_size": Interval(32, integer=True),
        "resize": Options(RESIZE_MODES),
    }

    def __post_init__(self) -> None:
        check_params(self, self.CONSTRAINTS)

    def identity(self, window: Window = DEFAULT_WINDOW) -> dict[str, Any]:
        """The parameters an embedding made with this config records, but where the weights
        were found: which weights these are is known without loading them. ``window`` is the
        scan's, which decides what a DICOM's pixels are."""
        return asdict(self) | {
            "model": MODEL,
            "weights_sha256": weights_sha256(self.weights),
            "dim": LAYERS[self.layer],
            "window": str(window),
        }


@dataclass(frozen=True)
class EmbedResult:
    """The consolidated table and what this run did."""

    frame: pd.DataFrame
    reused: int  #: embeddings carried over from earlier (possibly interrupted) runs
    embedded: int  #: images embedded by this run
    failed: dict[str, Failure]  #: image_id -> (status, reason), for images not loaded now
    discarded: list[str]  #: damaged part files of an earlier run, discarded and redone
    params: dict[str, Any]
    device: str | None = None  #: where this run embedded ("cpu (fp32)"); None: nothing to embed


@dataclass(frozen=True)
class ModelRun:
    """The embedder at work on a list of files."""

    #: Batches as they are done, in any order: indices into the files, vectors, failures.
    batches: Generator[EmbeddedBatch, None, None]
    weights_source: str  #: where the weights were found ("offline-package", ...)
    device: str  #: where it runs, with its precision ("cpu (fp32)")


class FileEmbedder(Protocol):
    """Starts the embedder on files: :func:`embed_locally` on this machine,
    :meth:`fracture_curate.distributed.RayCluster.embed_files` on a Ray cluster."""

    def __call__(
        self,
        files: list[ScannedFile],
        config: EmbedConfig,
        *,
        device: str,
        batch_size: int | None,
        workers: int | None,
    ) -> ModelRun: ...


def embed_manifest(
    directory: str | Path,
    config: EmbedConfig = EmbedConfig(),
    *,
    root: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    checkpoint_every: int = 2048,
    on_progress: ProgressCallback | None = None,
    embed_files: FileEmbedder | None = None,
) -> EmbedResult:
    """Embed every kept image of ``DIR/scan.parquet`` that has no embedding yet.

    Args:
        directory: the manifests folder.
        config: what decides the vectors.
        root: the dataset folder, when it moved since the scan.
        device: "auto", "cpu", "cuda" or "cuda:N".
        batch_size: images per batch (default: 4 on a CPU, 256 on CUDA).
        workers: loader processes (default: one per core); on Ray, model actors.
        checkpoint_every: images between saved parts (the resume points).
        on_progress: progress callback, phase "embedding".
        embed_files: where the model runs (default :func:`embed_locally`; a Ray cluster's
            :meth:`~fracture_curate.distributed.RayCluster.embed_files`). Whatever runs it,
            this process saves the vectors in the same parts and writes the same manifest.
    """
    directory = Path(directory)
    check_device_name(device)
    with folder_lock(directory):
        scan_file = manifest_path(directory, "scan")
        scan = read_manifest(
            scan_file, stage="scan", columns=["image_id", "path", "bytes", "status"]
        )
        scan_provenance = read_provenance(scan_file)
        kept = scan[scan["status"] == "ok"].drop_duplicates("image_id")

        window = recorded_window(scan_provenance)
        identity = config.identity(window)
        out_file = manifest_path(directory, "embed")
        parts = PartStore(directory / PARTS_FOLDER)
        done, previous = _reusable(out_file, parts, identity)
        todo = kept[~kept["image_id"].isin(done["image_id"])]
        phase = Phase(on_progress, "embedding", len(todo))

        failed: dict[str, Failure] = {}
        used = None
        if todo.empty:
            source = previous.provenance["params"]["weights_source"] if previous else "earlier run"
            params = identity | {"weights_source": source}
        else:
            files = scanned_files(todo, dataset_root(scan_provenance, root).absolute(), window)
            run = (embed_files or embed_locally)(
                files, config, device=device, batch_size=batch_size, workers=workers
            )
            params, failed = _embed_into_parts(
                files,
                parts,
                run,
                identity,
                checkpoint_every=checkpoint_every,
                on_batch=phase.advance,
            )
            used = run.device

        frame = pd.concat([done, parts.read_new(identity)], ignore_index=True)
        frame = kept[["image_id"]].merge(frame.drop_duplicates("image_id"), on="image_id")
        if not todo.empty or parts.exist() or not _up_to_date(previous, frame, scan_provenance):
            write_manifest(
                embeddings_table(frame, identity["dim"]),
                out_file,
                stage="embed",
                params=params,
                inputs={"scan": scan_provenance},
                details={"failed": failed},
            )
        parts.clear()
    return EmbedResult(
        frame=frame,
        reused=len(done),
        embedded=len(todo) - len(failed),
        failed=failed,
        discarded=parts.discarded,
        params=params,
        device=used,
    )


def embed_locally(
    files: list[ScannedFile],
    config: EmbedConfig,
    *,
    device: str,
    batch_size: int | None,
    workers: int | None,
) -> ModelRun:
    """Load the model on this machine and start it on ``files`` (a :class:`FileEmbedder`)."""
    from fracture_curate.embedder import default_batch_size, embed_files, load_embedder  # torch

    torch_device = resolve_device(device)
    model, weights_source = load_embedder(config.weights, config.layer, torch_device)
    batches = embed_files(
        model,
        ImageFiles(files, config.image_size, config.resize),
        torch_device,
        batch_size=batch_size or default_batch_size(torch_device.type == "cuda"),
        workers=core_workers() if workers is None else workers,
    )
    precision = "bf16" if torch_device.type == "cuda" else "fp32"
    return ModelRun(batches, weights_source, f"{torch_device} ({precision})")


def _embed_into_parts(
    files: list[ScannedFile],
    parts: PartStore,
    run: ModelRun,
    identity: dict[str, Any],
    *,
    checkpoint_every: int,
    on_batch: Callable[[int], None],
) -> tuple[dict[str, Any], dict[str, Failure]]:
    """Save the vectors of ``run`` in a part every ``checkpoint_every`` images as its batches
    come. Returns the run's parameters and the failures (image id -> (status, reason)), in the
    order of ``files``. ``on_batch(n)`` is called as each batch of ``n`` images is done; the
    run is stopped, its workers freed, however this ends."""
    params = identity | {"weights_source": run.weights_source}
    image_ids = [file.image_id for file in files]
    failures: dict[int, Failure] = {}
    pending_ids: list[str] = []
    pending_vectors: list[np.ndarray] = []
    with closing(run.batches) as batches:
        for indices, vectors, batch_failures in batches:
            failures.update(batch_failures)
            if indices:
                pending_ids.extend(image_ids[index] for index in indices)
                pending_vectors.append(vectors)
            if len(pending_ids) >= checkpoint_every:
                parts.write(pending_ids, np.concatenate(pending_vectors), params)
                pending_ids, pending_vectors = [], []
            on_batch(len(indices) + len(batch_failures))
    if pending_ids:
        parts.write(pending_ids, np.concatenate(pending_vectors), params)
    return params, {image_ids[index]: failures[index] for index in sorted(failures)}


def embeddings_table(frame: pd.DataFrame, dim: int) -> pa.Table:
    """``image_id`` and a fixed-size float32 list column ``embedding``."""
    vectors = (
        np.stack(frame["embedding"].to_list()).astype(np.float32)
        if len(frame)
        else np.empty((0, dim), np.float32)
    )
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
    return pa.table(
        {"image_id": pa.array(frame["image_id"].to_list(), pa.string()), "embedding": embedding}
    )


def same_embedding(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' parameters give interchangeable vectors (same model, weights, input)."""
    return all(a.get(key) == b.get(key) for key in IDENTITY_KEYS)


class PartStore:
    """Atomic part files of finished embeddings, each tagged with its run's parameters."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.discarded: list[str] = []  #: damaged parts found (and deleted) by :meth:`read_new`
        self._read: set[str] = set()  #: parts already returned by :meth:`read_new`

    def write(self, image_ids: list[str], vectors: np.ndarray, params: dict[str, Any]) -> None:
        """One more part: ``vectors`` of ``image_ids``, made with ``params``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        found = sorted(self.folder.glob("part-*.parquet"))
        index = int(found[-1].stem.removeprefix("part-")) + 1 if found else 0  # after the last
        frame = pd.DataFrame({"image_id": image_ids, "embedding": list(vectors)})
        write_manifest(
            embeddings_table(frame, vectors.shape[1]),
            self.folder / f"part-{index:06d}.parquet",
            stage="embed",
            params=params,
        )

    def read_new(self, identity: dict[str, Any]) -> pd.DataFrame:
        """Every part made with the same ``identity`` that this store has not returned before
        (others are stale and ignored), so a resumed run reads each part once. A damaged part
        (a full disk, a hand edit) is deleted and its images are embedded again."""
        frames = []
        for part in sorted(self.folder.glob("part-*.parquet")):
            if part.name in self._read:
                continue
            try:
                if same_embedding(read_provenance(part)["params"], identity):
                    frames.append(pd.read_parquet(part))
            except (ManifestError, OSError, pa.ArrowException, KeyError):
                self.discarded.append(part.name)
                part.unlink(missing_ok=True)  # its name is free for a new part
            else:
                self._read.add(part.name)
        return pd.concat(frames, ignore_index=True) if frames else _empty()

    def exist(self) -> bool:
        """Whether any part is on disk."""
        return self.folder.is_dir() and any(self.folder.glob("part-*.parquet"))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class _Previous:
    """The full embeddings file of an earlier run with the same identity."""

    provenance: dict[str, Any]
    image_ids: list[str]


def _reusable(
    out_file: Path, parts: PartStore, identity: dict[str, Any]
) -> tuple[pd.DataFrame, _Previous | None]:
    """Embeddings already made with the same identity (the last full file plus saved parts), and
    that full file, when its embeddings are among them."""
    frames = [parts.read_new(identity)]
    previous = None
    if out_file.exists():
        provenance = read_provenance(out_file)
        if same_embedding(provenance["params"], identity):
            frames.append(pd.read_parquet(out_file))
            previous = _Previous(provenance, frames[-1]["image_id"].tolist())
    return pd.concat(frames, ignore_index=True).drop_duplicates("image_id"), previous


def _up_to_date(
    previous: _Previous | None, frame: pd.DataFrame, scan_provenance: dict[str, Any]
) -> bool:
    """Whether the full file already holds ``frame`` exactly, made from the current scan: then
    it is left as it is, and the manifests made from it stay valid."""
    return (
        previous is not None
        and previous.provenance.get("inputs", {}).get("scan") == scan_provenance.get("run_id")
        and previous.image_ids == frame["image_id"].tolist()
    )


def _empty() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in EMBEDDING_COLUMNS.items()})
