"""The shared loader: modes, EXIF orientation, 16-bit radiographs, the bomb guard."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
from helpers import noise_image, png_header_only
from PIL import Image

from fracture_curate.images import ImageLoadError, load_image, to_rgb8, to_uint8


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
    assert caught.value.reason == "not a recognised image format"


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


def test_sixteen_bits_are_windowed_to_their_own_range():
    pixels = np.array([[1000, 1500], [2000, 1250]], dtype=np.uint16)  # a 10-bit range, offset
    assert to_uint8(pixels).tolist() == [[0, 128], [255, 64]]
    flat = np.full((2, 2), 700, dtype=np.uint16)
    assert to_uint8(flat).tolist() == [[0, 0], [0, 0]]  # no range: no division by zero
    eight = np.array([[3, 200]], dtype=np.uint8)
    assert to_uint8(eight) is eight  # 8-bit images pass through untouched


def test_a_palette_image_is_read_as_its_colours_not_its_indices():
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([200, 200, 200, 50, 50, 50, 120, 120, 120] + [0] * 759)  # greys, reordered
    loaded = load_image(encode(image, "PNG"))
    assert loaded.mode == "P" and loaded.is_grayscale
    assert loaded.pixels.tolist() == [[200, 50], [120, 50]]
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)  # colours
    colour = load_image(encode(image, "PNG")).pixels
    assert colour.shape == (2, 2, 3) and colour[0, 0].tolist() == [255, 0, 0]


def test_alpha_is_dropped_and_wide_integers_are_clipped():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = [[10, 20], [30, 40]]
    rgba[..., 1] = [[1, 2], [3, 4]]
    rgba[..., 3] = [[0, 255], [128, 7]]  # alpha must not leak into the pixels
    loaded = load_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    assert loaded.pixels[..., :2].tolist() == rgba[..., :2].tolist()
    wide = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), mode="I")
    assert load_image(encode(wide, "TIFF")).pixels.tolist() == [[0, 65535]]


def test_an_rgb_file_of_grey_pixels_is_the_same_picture_as_its_grey_file():
    gray = noise_image(8)
    as_rgb = load_image(encode(Image.fromarray(gray).convert("RGB"), "PNG"))
    as_gray = load_image(encode(Image.fromarray(gray), "PNG"))
    assert as_rgb.is_grayscale
    np.testing.assert_array_equal(as_rgb.pixels, as_gray.pixels)


def test_a_load_error_reads_as_its_reason_and_survives_a_process_boundary():
    error = ImageLoadError("truncated", "the data stops early")
    assert str(error) == "the data stops early"
    again = pickle.loads(pickle.dumps(error))
    assert (again.status, again.reason) == ("truncated", "the data stops early")


def test_the_pixel_guard_admits_exactly_max_pixels():
    data = encode(Image.fromarray(noise_image(3)), "PNG")  # 64 x 48 = 3,072 pixels
    assert load_image(data, max_pixels=3072).pixels.shape == (64, 48)
    with pytest.raises(ImageLoadError, match=r"48x64 exceeds the 3,071-pixel guard"):
        load_image(data, max_pixels=3071)


def test_frames_are_counted():
    frames = [Image.fromarray(noise_image(seed)) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).n_frames == 3
    assert load_image(encode(frames[0], "PNG")).n_frames == 1
    assert load_image(encode(frames[0], "BMP")).n_frames == 1  # a format that cannot hold more


def test_data_a_decoder_rejects_is_corrupt(monkeypatch):
    data = encode(Image.fromarray(noise_image(1)), "PNG")

    def refuse(image: Image.Image) -> None:
        raise ValueError("tile cannot extend outside image")

    monkeypatch.setattr(Image.Image, "load", refuse)
    with pytest.raises(ImageLoadError) as caught:
        load_image(data)
    assert caught.value.status == "corrupt"
    assert caught.value.reason == "cannot decode PNG: tile cannot extend outside image"


def test_a_range_of_one_grey_level_spans_black_to_white():
    assert to_uint8(np.array([[1000, 1001]], dtype=np.uint16)).tolist() == [[0, 255]]


def test_three_channels_are_made_of_one_and_colour_is_kept():
    gray = noise_image(2)
    assert np.array_equal(to_rgb8(gray), np.stack([gray] * 3, axis=2))
    colour = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert to_rgb8(colour) is colour


def test_deep_integer_modes_become_native_uint16():
    big_endian = np.array([[1, 300], [65535, 0]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 2), big_endian.tobytes())
    loaded = load_image(encode(image, "TIFF"))
    assert loaded.pixels.dtype == np.uint16 and loaded.pixels.dtype.isnative
    assert loaded.pixels.tolist() == [[1, 300], [65535, 0]]
    wide = Image.fromarray(np.array([[-5, 70000, 12]], dtype=np.int32), mode="I")
    loaded = load_image(encode(wide, "TIFF"))
    assert loaded.pixels.dtype == np.uint16 and loaded.pixels.tolist() == [[0, 65535, 12]]


def test_floating_point_images_are_rounded_and_clipped_to_eight_bits():
    floats = np.array([[-3.0, 0.4, 0.6, 254.6, 300.0]], dtype=np.float32)
    loaded = load_image(encode(Image.fromarray(floats, mode="F"), "TIFF"))
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.tolist() == [[0, 0, 1, 255, 255]]


def test_a_palette_with_transparency_converts_without_a_warning():
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 10, 10, 90, 90, 90, 30, 30, 30] + [0] * 759)
    # Partial alpha per index is kept as bytes, which Pillow warns about on a direct RGB convert.
    data = encode(image, "PNG", transparency=b"\x80\x40\xff")
    with Image.open(io.BytesIO(data)) as saved:
        assert isinstance(saved.info["transparency"], bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(data).pixels.tolist() == [[10, 90, 30]]


def test_only_three_equal_channels_make_grey():
    yellowish = np.zeros((2, 2, 3), dtype=np.uint8)
    yellowish[..., 0] = yellowish[..., 1] = 200  # red equals green, blue differs
    yellowish[..., 2] = 10
    loaded = load_image(encode(Image.fromarray(yellowish), "PNG"))
    assert not loaded.is_grayscale and loaded.pixels.shape == (2, 2, 3)
    cyan = yellowish[..., ::-1].copy()  # green equals blue, red differs
    assert not load_image(encode(Image.fromarray(cyan), "PNG")).is_grayscale
