"""Small helpers for tests: writing images, files as the scan sees them, live processes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fracture_curate.dataset_files import ScannedFile, content_id
from fracture_curate.embed import EmbedConfig, embeddings_table
from fracture_curate.manifest import manifest_path, read_stage, write_manifest
from fracture_curate.schema import table_columns


def save_gray(path: Path, pixels: np.ndarray, **params: object) -> Path:
    """Save a grayscale array (uint8 or uint16) with Pillow, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **params)
    return path


def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A small random grayscale uint8 array (height x width)."""
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def write_noise_images(root: Path, relative_paths: list[str], fmt: str | None = None) -> None:
    """A distinct noise image at each relative path, in ``fmt`` or the format its extension
    names (PNG for ``.png``, else JPEG)."""
    for index, relative in enumerate(relative_paths):
        chosen = fmt or ("PNG" if relative.endswith(".png") else "JPEG")
        save_gray(root / relative, noise_image(index), format=chosen)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``: a decompression bomb's calling card."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def scanned(path: Path) -> ScannedFile:
    """A file as the scan would record it now (its folder as the root)."""
    data = path.read_bytes()
    return ScannedFile(path.parent, path.name, content_id(data), len(data))


def processes_running(argument):
    """PIDs of live (not zombie) processes whose command line holds ``argument`` (Linux)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or argument not in (entry / "cmdline").read_text():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # the process ended meanwhile
            continue
        if state != "Z":
            pids.append(int(entry.name))
    return pids


def curated_table(labels: list[str], stage: str = "outliers", **columns: object) -> pd.DataFrame:
    """A row table of ``stage`` by hand, one kept, distinct, labelled file per label given:
    every column of the schema, typed, with ``columns`` overriding (scalars or sequences)."""
    n = len(labels)
    values: dict[str, object] = {
        "image_id": [f"{index:064x}" for index in range(n)],
        "path": [f"{label}/{index:04d}.png" for index, label in enumerate(labels)],
        "bytes": 1000,
        "status": "ok",
        "label": labels,
        "width": 64,
        "height": 64,
        "format": "PNG",
        "lossy": False,
        "cluster_id": range(n),
        "cluster_size": 1,
        "is_kept": True,
        "label_conflict": False,
        "outlier_score": 0.5,
        "is_outlier": False,
    } | columns
    frame = pd.DataFrame({"row": range(n)})
    for name, dtype in table_columns(stage).items():
        value = values.get(name)
        frame[name] = list(value) if isinstance(value, range | list | tuple) else [value] * n
        frame[name] = frame[name].astype(dtype)
    return frame.drop(columns="row")


def write_embeddings(manifests, scan: pd.DataFrame, failed: dict | None = None) -> None:
    """An embeddings manifest made by hand from the scan in ``manifests``: random vectors for
    the kept files, ``failed`` recorded as embed records the files it could not read."""
    _, provenance = read_stage(manifests, "scan")
    kept = scan[(scan["status"] == "ok") & ~scan["image_id"].isin(list(failed or {}))]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"image_id": kept["image_id"], "embedding": list(rng.gamma(1.0, 1.0, (len(kept), 16)))}
    )
    write_manifest(
        embeddings_table(frame, 16),
        manifest_path(manifests, "embed"),
        stage="embed",
        params=EmbedConfig(weights="random").identity(),
        inputs={"scan": provenance},
        details={"failed": failed or {}},
    )
