"""Shared fixtures: real radiographs from pydicom-data and small generated images."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings


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
def chest_radiograph() -> np.ndarray:
    """The chest radiograph RG1 (1955 x 1841, 15-bit), lossless encoding."""
    return read_dicom_radiograph("RG1_UNCR.dcm")


@pytest.fixture(scope="session")
def ankle_radiograph_lossy() -> np.ndarray:
    """The same radiograph as RG3 from its lossy JPEG 2000 encoding: a real near-duplicate."""
    return read_dicom_radiograph("RG3_J2KI.dcm")


# Hypothesis: a moderate number of examples in the suite, fewer when the mutation tests run it
# once per mutant (HYPOTHESIS_PROFILE=mutation); no deadline, the machine being shared.
settings.register_profile("suite", max_examples=60, deadline=None)
settings.register_profile("mutation", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
