"""Shared fixtures: real radiographs from pydicom-data and small generated images."""

from __future__ import annotations

import numpy as np
import pytest


def read_dicom_radiograph(name: str) -> np.ndarray:
    """A real radiograph from pydicom-data as uint16, MONOCHROME1 inverted (bone bright)."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file(name))
    pixels = dataset.pixel_array.astype(np.uint16)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = np.uint16(2**dataset.BitsStored - 1) - pixels
    return pixels


@pytest.fixture(scope="session")
def ankle_radiograph() -> np.ndarray:
    """The ankle / distal tibia-fibula radiograph RG3 (1760 x 1760, 10-bit), lossless encoding."""
    return read_dicom_radiograph("RG3_UNCR.dcm")


@pytest.fixture(scope="session")
def ankle_radiograph_lossy() -> np.ndarray:
    """The same radiograph as RG3 from its lossy JPEG 2000 encoding: a real near-duplicate."""
    return read_dicom_radiograph("RG3_J2KI.dcm")
