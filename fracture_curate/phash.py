"""Perceptual hashes that see through flips and 90-degree rotations.

Public datasets bake offline augmentation into their files, so a copy is often a mirrored or
rotated original. Each image gets the 256-bit imagehash pHash (hash size 16) of all 8 orientations
of its thumbnail, identity first; two images match when one's identity hash is within a Hamming
radius of any of the other's 8 hashes. 256 bits rather than 64, because radiographs look alike:
distinct phantoms can be 4 bits apart in a 64-bit pHash, but stay over 40 bits apart in 256.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import imagehash
import numpy as np
from PIL import Image

from fracture_curate.images import to_rgb8

HASH_SIZE = 16  #: bits per side of the DCT block: 16 x 16 = 256 bits per orientation
HASH_BITS = HASH_SIZE * HASH_SIZE
#: Orientations in the order their hashes are stored; ``None`` is the image as it is.
ORIENTATIONS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSVERSE,
)
_WORDS = HASH_BITS // 64


def dihedral_phash(pixels: np.ndarray) -> bytes:
    """The pHash of each of the 8 orientations of an image: 8 x 32 bytes, identity first."""
    if pixels.ndim == 2:
        gray = Image.fromarray(to_rgb8(pixels)[:, :, 0])
    else:
        gray = Image.fromarray(pixels).convert("L")
    side = HASH_SIZE * 4  # imagehash.phash's own working size
    thumb = gray.resize((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    packed = []
    for orientation in ORIENTATIONS:
        variant = thumb if orientation is None else thumb.transpose(orientation)
        packed.append(np.packbits(imagehash.phash(variant, hash_size=HASH_SIZE).hash.ravel()))
    return np.concatenate(packed).tobytes()


def unpack_hashes(blobs: Sequence[bytes]) -> np.ndarray:
    """N x 8 x 4 uint64 words from the ``phash`` column."""
    return np.frombuffer(b"".join(blobs), dtype=np.uint64).reshape(
        len(blobs), len(ORIENTATIONS), _WORDS
    )


def phash_distance(a: bytes, b: bytes) -> int:
    """Bits between ``a``'s identity hash and the closest orientation of ``b``."""
    hashes = unpack_hashes([a, b])
    return int(np.bitwise_count(hashes[0, 0] ^ hashes[1]).sum(axis=1).min())


def phash_pairs(
    hashes: np.ndarray, radius: int, *, block: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs ``i < j`` within ``radius`` bits in some orientation, as ``(i, j, bits)`` arrays.

    ``hashes`` is N x 8 x 4 (see :func:`unpack_hashes`). Each block of rows' identity hashes is
    compared with every orientation of the rows after it, so memory stays at ``block x N``.
    """
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block, 0, None, :]  # b x 1 x 4
        others = hashes[start:]
        best = np.full((len(rows), len(others)), HASH_BITS, dtype=np.int64)
        for orientation in range(len(ORIENTATIONS)):
            bits = np.bitwise_count(rows ^ others[None, :, orientation, :]).sum(
                axis=2, dtype=np.int64
            )
            np.minimum(best, bits, out=best)
        i, j = np.nonzero(best <= radius)
        keep = j > i
        i, j = i[keep], j[keep]
        yield start + i, start + j, best[i, j]
