"""Keyed pseudonyms for the identifiers a DICOM header carries (PatientID, study and series
UIDs): the same value always gives the same pseudonym under one key, so splits can group a
patient's films, while the value itself never reaches a manifest, a report or a log.

The key, in order: a key file given to the scan (``--pseudonym-key``); the hex key in the
environment variable :data:`KEY_ENV`; else a random key made for the dataset by the first scan
that finds a DICOM file, and kept beside the manifests, in :data:`KEY_FILE` (readable by its
owner only), never in them.
Whoever holds the key can test a guessed identifier against a pseudonym: keep it with the
images, not with the manifests you share.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fracture_curate.errors import ConfigError

#: Environment variable holding the key, in hex.
KEY_ENV = "FRACTURE_CURATE_PSEUDONYM_KEY"
#: The key made for a dataset, in its manifests folder.
KEY_FILE = "pseudonym.key"
#: Bytes of a key made here (HMAC-SHA256's block is larger; 32 bytes is its output size).
KEY_BYTES = 32
#: Hex digits of a pseudonym: 80 bits, no collision among a million patients in practice.
PSEUDONYM_DIGITS = 20


def pseudonym(key: bytes, value: str) -> str:
    """``value``'s pseudonym under ``key``: HMAC-SHA256, the first PSEUDONYM_DIGITS hex digits."""
    digest = hmac.new(key, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_DIGITS]


def dataset_key(directory: str | Path, key_file: str | Path | None = None) -> tuple[bytes, bool]:
    """The key for the manifests in ``directory``, and whether it is new: ``key_file``, else
    :data:`KEY_ENV`, else the folder's own :data:`KEY_FILE`, else a new random key, which
    :func:`keep_key` writes there once a scan has used it."""
    if key_file is not None:
        return _read_key(Path(key_file)), False
    if os.environ.get(KEY_ENV):
        try:
            return bytes.fromhex(os.environ[KEY_ENV]), False
        except ValueError as error:
            raise ConfigError(f"{KEY_ENV} must hold a key in hex") from error
    path = Path(directory) / KEY_FILE
    if path.exists():
        return _read_key(path), False
    return secrets.token_bytes(KEY_BYTES), True


def keep_key(directory: str | Path, key: bytes) -> Path:
    """Write a new ``key`` as ``directory``'s :data:`KEY_FILE`, readable by its owner only."""
    path = Path(directory) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key.hex() + "\n")
    return path


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"cannot read the pseudonym key {path}: {error.strerror}") from error
    try:
        key = bytes.fromhex(text)
    except ValueError as error:
        raise ConfigError(f"the pseudonym key {path} must hold a key in hex") from error
    if len(key) < 16:
        raise ConfigError(f"the pseudonym key {path} is shorter than 16 bytes")
    return key
