"""Small helpers for tests: writing images, files as the scan sees them, live processes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fracture_curate.dataset_files import ScannedFile, content_id


def save_gray(path: Path, pixels: np.ndarray, **params: object) -> Path:
    """Save a grayscale array (uint8 or uint16) with Pillow, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **params)
    return path


def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A small random grayscale uint8 array (height x width)."""
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


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
