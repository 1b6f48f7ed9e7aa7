"""Process settings for CPU inference."""

from __future__ import annotations

import platform
import sys

import pytest

from fracture_curate.runtime import resolve_device, retain_freed_memory


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_glibc_accepts_the_allocator_settings():
    assert retain_freed_memory() is True


def test_unknown_or_missing_devices_are_errors():
    assert resolve_device("cpu").type == "cpu"
    for unknown in ("tpu", "cuda:x", "cpu0"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(unknown)
