"""Reading and writing the Parquet manifests that connect the stages.

Every manifest carries, in its key-value metadata, the stage that wrote it, that stage's
parameters and the tool version, so a table says how it was made. Writes are atomic: a killed run
leaves the previous good file, never a torn one.
"""

from __future__ import annotations

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
from fracture_curate.errors import CurateError

METADATA_KEY = b"fracture_curate"


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
) -> Path:
    """Write ``frame`` atomically to ``path`` with the stage's provenance in the metadata.

    ``inputs`` maps each stage whose manifest was read to its provenance, so a later read can
    tell when an input has been rewritten since (see :func:`read_stage`).
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
    }
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(provenance, default=str).encode()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as temp:
        pq.write_table(table, temp, compression="zstd", use_dictionary=_dictionary_columns(table))
    return Path(path)


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding: all but floating-point ones (embeddings above all),
    whose values rarely repeat, so trying a dictionary only slows the write (4x for vectors)."""
    return [field.name for field in table.schema if not _is_floating(field.type)]


def _is_floating(kind: pa.DataType) -> bool:
    """Floats, or lists of them."""
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        return _is_floating(kind.value_type)
    return pa.types.is_floating(kind)


def write_stage(
    frame: pd.DataFrame,
    directory: str | Path,
    stage: str,
    *,
    params: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
) -> Path:
    """Write a stage's manifest into ``directory``, recording its inputs and carrying the
    dataset root forward from them (``params["root"]`` overrides it)."""
    roots = (recorded_root(given) for given in inputs.values())
    params = {"root": next((str(root) for root in roots if root), None)} | params
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


def read_stage(directory: str | Path, stage: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A stage's manifest in ``directory`` and its provenance.

    It must be that stage's, and made from the inputs now in ``directory``: a manifest whose
    input was rewritten since (a new scan under an old dedupe, say) is an error, not a mix.
    """
    path = manifest_path(directory, stage)
    frame = read_manifest(path, stage=stage)
    provenance = read_provenance(path)
    for upstream, run_id in provenance.get("inputs", {}).items():
        upstream_path = manifest_path(directory, upstream)
        if upstream_path.exists() and read_provenance(upstream_path).get("run_id") != run_id:
            raise ManifestError(
                f"{path.name} was made from an older {upstream_path.name}; "
                f"run `curate {stage}` again"
            )
    return frame, provenance


def recorded_root(provenance: dict[str, Any]) -> Path | None:
    """The dataset folder a manifest records (the scan's root, carried forward by each stage)."""
    root = provenance.get("params", {}).get("root")
    return Path(root) if root else None


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
    """Read a manifest, checking that it was written by ``stage`` when one is given."""
    path = Path(path)
    if not path.exists():
        hint = f" Run `curate {stage}` first." if stage else ""
        raise ManifestError(f"{path} does not exist.{hint}")
    provenance = read_provenance(path)
    if stage is not None and provenance.get("stage") != stage:
        raise ManifestError(
            f"{path} was written by stage {provenance.get('stage')!r}, expected {stage!r}"
        )
    return pd.read_parquet(path, columns=columns)
