"""Reading and writing the Parquet manifests that connect the stages.

Every manifest carries, in its key-value metadata, the stage that wrote it, that stage's
parameters and the tool version, so a table says how it was made. Writes are atomic: a killed run
leaves the previous good file, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fracture_curate import __version__
from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.errors import ConfigError, CurateError
from fracture_curate.schema import (
    EMBEDDING_COLUMNS,
    STAGE_COLUMNS,
    STAGES,
    TABLE_STAGES,
    column_type_problem,
    table_columns,
)

METADATA_KEY = b"fracture_curate"
#: The scan's parameters that every later stage's manifest records too: where the dataset's
#: files are, and the window a DICOM among them is decoded with.
CARRIED_PARAMS = ("root", "window")
LOCK_FILE = ".lock"


class ManifestError(CurateError):
    """A manifest that is missing, unreadable or not the one a stage expects."""


def manifest_path(directory: str | Path, stage: str) -> Path:
    """Where a stage's manifest lives: ``DIR/<stage>.parquet`` (embed writes embeddings.parquet)."""
    name = "embeddings" if stage == "embed" else stage
    return Path(directory) / f"{name}.parquet"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 is not what a user expects
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def folder_lock(directory: str | Path, what: str = "manifests folder") -> Iterator[None]:
    """Hold the folder's write lock while a command writes into it.

    One writer at a time: a second command on the same folder stops at once with an error
    naming the first, instead of interleaving its writes. The lock is advisory (``flock`` on
    ``DIR/.lock``) and the system releases it when its process ends, however it ends.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ManifestError(
                f"{holder} is writing to the {what} {directory}; wait for it to finish, or use "
                "another folder"
            ) from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"fracture-curate (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(
    frame: pd.DataFrame | pa.Table,
    path: str | Path,
    *,
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None = None,
    details: dict[str, Any] | None = None,
) -> Path:
    """Write ``frame`` atomically to ``path`` with the stage's provenance in the metadata.

    ``inputs`` maps each stage whose manifest was read to its provenance, so a later read can
    tell when an input has been rewritten since (see :func:`check_chain`); ``details`` records
    what the run found beyond its table (the files embed could not read, say).
    """
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    provenance = {
        "stage": stage,
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": uuid.uuid4().hex,
        "params": params,
        "inputs": {name: given.get("run_id") for name, given in (inputs or {}).items()},
        "details": details or {},
    }
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(provenance, default=str).encode()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as temp:
        pq.write_table(table, temp, compression="zstd", use_dictionary=_dictionary_columns(table))
    return Path(path)


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding: all but floating-point ones, whose values rarely
    repeat, so trying a dictionary only slows the write (4x for vectors). A list column such as
    the embeddings is named by its leaf path (``embedding.list.element``), so naming its top
    level here leaves it plain too."""
    return [field.name for field in table.schema if not pa.types.is_floating(field.type)]


def write_stage(
    frame: pd.DataFrame,
    directory: str | Path,
    stage: str,
    *,
    params: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
) -> Path:
    """Write a stage's manifest into ``directory``, recording its inputs and carrying the
    scan's :data:`CARRIED_PARAMS` forward from them (``params`` overrides them)."""
    carried = {}
    for name in CARRIED_PARAMS:
        values = (given.get("params", {}).get(name) for given in inputs.values())
        carried[name] = next((value for value in values if value), None)
    params = carried | params
    path = manifest_path(directory, stage)
    return write_manifest(frame, path, stage=stage, params=params, inputs=inputs)


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The stage, parameters and tool version stored in a manifest's metadata."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except FileNotFoundError as error:
        raise ManifestError(f"{path} does not exist") from error
    except (OSError, pa.ArrowInvalid) as error:
        raise ManifestError(f"{path} is not a readable Parquet file: {error}") from error
    if METADATA_KEY not in metadata:
        raise ManifestError(f"{path} was not written by fracture-curate (no provenance metadata)")
    return json.loads(metadata[METADATA_KEY])


def written_before(directory: str | Path, stage: str) -> str | None:
    """The manifest of ``stage`` in ``directory`` as a stage that replaces it names it ("written
    2026-11-30T18:02:11+00:00", "written at an unknown time", "that could not be read"), or None
    when there is none: read before a stage runs, to say afterwards what it replaced."""
    path = manifest_path(directory, stage)
    if not path.exists():
        return None
    try:
        return f"written {read_provenance(path).get('created', 'at an unknown time')}"
    except ManifestError:
        return "that could not be read"


def replaced_lines(directory: str | Path, stage: str, before: str | None) -> list[tuple[str, bool]]:
    """What a stage that rewrote its manifest tells the user, each line with whether it is a
    warning: the manifest it replaced, and the later stages' manifests beside it, made from the
    old one (every stage refuses them until they are made again). Empty when there was no
    manifest ``before``."""
    if before is None:
        return []
    lines = [(f"replaced the {manifest_path(directory, stage).name} {before}", False)]
    later = [s for s in STAGES[STAGES.index(stage) + 1 :] if manifest_path(directory, s).exists()]
    if later:
        names = ", ".join(manifest_path(directory, s).name for s in later)
        again = ", ".join(f"`curate {s}`" for s in later)
        were = "were" if len(later) > 1 else "was"
        lines.append((f"{names} {were} made from the old one: run {again} again", True))
    return lines


def read_stage(directory: str | Path, stage: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A stage's manifest in ``directory`` and its provenance, checked by :func:`read_manifest`."""
    path = manifest_path(directory, stage)
    provenance = check_manifest(path, stage=stage)
    return pd.read_parquet(path), provenance


def check_chain(path: str | Path) -> None:
    """A manifest must be made from the manifests now beside it, all the way up the chain.

    Each manifest records the run id of every manifest it was made from; one whose input was
    rewritten since (a new scan under an old dedupe, two stages back or ten) is an error naming
    the stage to run again, not a mix.
    """
    path = Path(path)
    top = read_provenance(path)
    pending, checked = [top], set()
    while pending:
        provenance = pending.pop()
        for upstream, run_id in provenance.get("inputs", {}).items():
            upstream_path = manifest_path(path.parent, upstream)
            if upstream in checked or not upstream_path.exists():
                continue
            found = read_provenance(upstream_path)
            if found.get("run_id") != run_id:
                stage = provenance.get("stage")
                then = "" if stage == top.get("stage") else " and the stages after it"
                raise ManifestError(
                    f"{manifest_path(path.parent, stage).name} was made from an older "
                    f"{upstream_path.name}; run `curate {stage}`{then} again"
                )
            checked.add(upstream)
            pending.append(found)


def check_columns(path: str | Path, stage: str, columns: list[str] | None = None) -> None:
    """A stage's manifest must hold the schema's columns (or those of ``columns``), each of a
    type that fits its dtype."""
    expected = EMBEDDING_COLUMNS if stage == "embed" else table_columns(stage)
    if columns is not None:
        expected = {name: expected.get(name) for name in columns}  # not in the schema: any type
    stored = pq.read_schema(path)
    missing = [name for name in expected if name not in stored.names]
    if missing:
        # a column an earlier stage writes (added by a newer version) needs that stage again
        writers = [s for s in TABLE_STAGES if s != stage and set(missing) & set(STAGE_COLUMNS[s])]
        if stage in TABLE_STAGES and writers:
            raise ManifestError(
                f"{path} lacks column(s) {', '.join(missing)}, which this version of "
                f"`curate {writers[0]}` and the stages after it write; run `curate {writers[0]}` "
                f"and each stage after it up to `curate {stage}` again"
            )
        raise ManifestError(
            f"{path} lacks column(s) {', '.join(missing)}, which `curate {stage}` writes; "
            f"run `curate {stage}` again"
        )
    for name, dtype in expected.items():
        problem = column_type_problem(name, dtype, stored.field(name).type)
        if problem:
            raise ManifestError(f"{path} is damaged: {problem}; run `curate {stage}` again")


def recorded_root(provenance: dict[str, Any]) -> Path | None:
    """The dataset folder a manifest records (the scan's root, carried forward by each stage)."""
    root = provenance.get("params", {}).get("root")
    return Path(root) if root else None


def recorded_window(provenance: dict[str, Any]) -> Window:
    """The window the scan decoded DICOM files with, carried forward by each stage; the default
    for a manifest that records none (written before there was a choice)."""
    text = provenance.get("params", {}).get("window")
    try:
        return Window.parse(text) if text else DEFAULT_WINDOW
    except ConfigError as error:
        raise ManifestError(
            f"the manifest records a window this version cannot read ({text!r}); "
            "run `curate scan` again"
        ) from error


def dataset_root(provenance: dict[str, Any], override: str | Path | None = None) -> Path:
    """The dataset folder a manifest's files are under: ``override`` (a dataset that moved), else
    the one the scan recorded. An error that says to pass --root when it is not a folder."""
    root = override if override is not None else recorded_root(provenance)
    if root is None:
        raise ManifestError("the manifest does not record its dataset folder; pass --root")
    if not Path(root).is_dir():
        given = "given" if override is not None else "recorded by the scan"
        raise ManifestError(f"dataset folder {root} ({given}) is missing; pass --root")
    return Path(root)


def read_manifest(
    path: str | Path, *, stage: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a manifest (or its ``columns``), checked by :func:`check_manifest`."""
    check_manifest(path, stage=stage, columns=columns)
    return pd.read_parquet(path, columns=columns)


def check_manifest(
    path: str | Path, *, stage: str | None = None, columns: list[str] | None = None
) -> dict[str, Any]:
    """A manifest's provenance, once it is known to be one. With ``stage``: check that the stage
    wrote it, that it was made from the manifests now beside it (:func:`check_chain`) and that
    its columns (or ``columns``) are the schema's. Reads the file's metadata, not its rows."""
    path = Path(path)
    if not path.exists():
        hint = f" Run `curate {stage}` first." if stage else ""
        raise ManifestError(f"{path} does not exist.{hint}")
    provenance = read_provenance(path)
    if stage is not None:
        if provenance.get("stage") != stage:
            raise ManifestError(
                f"{path} was written by stage {provenance.get('stage')!r}, expected {stage!r}"
            )
        check_chain(path)
        if stage in (*TABLE_STAGES, "embed"):
            check_columns(path, stage, columns)
    return provenance
