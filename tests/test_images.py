"""The shared loader: modes, EXIF orientation, 16-bit radiographs, the bomb guard."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import noise_image, png_header_only
from PIL import Image

from fracture_curate.images import ImageLoadError, load_image, to_rgb8


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_real_16bit_radiograph_keeps_its_depth(ankle_radiograph):
    data = encode(Image.fromarray(ankle_radiograph), "PNG")
    loaded = load_image(data)
    assert loaded.format == "PNG"
    assert loaded.bit_depth == 16 and loaded.is_grayscale
    np.testing.assert_array_equal(loaded.pixels, ankle_radiograph)
    rgb = to_rgb8(loaded.pixels)
    assert rgb.shape == (*ankle_radiograph.shape, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255  # windowed to the 10 bits actually used


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "LA", "RGBA", "CMYK", "1"])
def test_every_mode_becomes_a_canonical_array(mode):
    gray = Image.fromarray(noise_image(0))
    image = gray.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == mode
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.shape[:2] == (64, 48)
    # Grayscale content stays grayscale whatever the container mode.
    if mode != "CMYK":
        assert loaded.is_grayscale


def test_colour_image_stays_colour():
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    loaded = load_image(encode(Image.fromarray(rgb), "PNG"))
    assert not loaded.is_grayscale
    np.testing.assert_array_equal(loaded.pixels, rgb)


def test_exif_orientation_is_applied():
    pixels = noise_image(2, size=(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(pixels), "PNG", exif=exif)
    loaded = load_image(data)
    np.testing.assert_array_equal(loaded.pixels, np.rot90(pixels, k=-1))


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageLoadError) as caught:
        load_image(png_header_only(30_000, 30_000))
    assert caught.value.status == "too_large"
    with pytest.raises(ImageLoadError) as caught:
        load_image(encode(Image.fromarray(noise_image(3)), "PNG"), max_pixels=1000)
    assert caught.value.status == "too_large"


def test_text_is_not_an_image():
    with pytest.raises(ImageLoadError) as caught:
        load_image(b"path,label\nimage.png,fractured\n")
    assert caught.value.status == "not_image"


def test_damaged_png_data_is_corrupt():
    data = bytearray(encode(Image.fromarray(noise_image(6, size=(128, 128))), "PNG"))
    data[200:260] = bytes(60)  # zero out part of the compressed stream
    with pytest.raises(ImageLoadError) as caught:
        load_image(bytes(data))
    assert caught.value.status == "corrupt"
    assert "PNG" in caught.value.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_reported_as_truncated(fmt):
    data = encode(Image.fromarray(noise_image(4, size=(256, 256))), fmt)
    with pytest.raises(ImageLoadError) as caught:
        load_image(data[: len(data) // 2])
    assert caught.value.status == "truncated"


def test_jpeg_draft_decodes_at_reduced_scale():
    big = np.kron(noise_image(5, size=(64, 64)), np.ones((16, 16), dtype=np.uint8))
    data = encode(Image.fromarray(big), "JPEG", quality=90)
    loaded = load_image(data, draft_size=(256, 256))
    assert 256 <= loaded.pixels.shape[0] < 1024
