"""Image / mask decoding: conversions with notes, EXIF orientation, and every kind of bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bpiml.data.imageio import (
    DecodeError,
    decode_image,
    decode_mask,
    encode_image,
    encode_mask_png,
    image_size,
)


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = (np.arange(20 * 30 * 3).reshape(20, 30, 3) % 251).astype(np.uint8)


def test_rgb_png_unchanged():
    arr, notes = decode_image(_save(Image.fromarray(RGB)))
    assert arr.dtype == np.uint8 and arr.shape == (20, 30, 3) and notes == []
    np.testing.assert_array_equal(arr, RGB)


def test_grayscale():
    gray = RGB[..., 0]
    arr, notes = decode_image(_save(Image.fromarray(gray)))
    assert arr.shape == (20, 30, 3) and notes == ["converted grayscale to RGB"]
    np.testing.assert_array_equal(arr[..., 2], gray)


def test_rgba_drops_alpha():
    rgba = np.dstack([RGB, np.full((20, 30), 7, np.uint8)])
    arr, notes = decode_image(_save(Image.fromarray(rgba, "RGBA")))
    assert notes == ["dropped alpha (RGBA)"]
    np.testing.assert_array_equal(arr, RGB)


def test_16bit_grayscale_png_scaled():
    g16 = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    arr, notes = decode_image(_save(Image.fromarray(g16)))
    assert "scaled 16-bit to 8-bit" in notes and arr.shape == (20, 30, 3)
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255
    np.testing.assert_allclose(arr[..., 1].astype(float), g16 / 257.0, atol=0.51)


def test_palette():
    pal = Image.fromarray(RGB).quantize(colors=8)
    arr, notes = decode_image(_save(pal))
    assert notes == ["converted palette to RGB"] and arr.shape == (20, 30, 3)
    np.testing.assert_array_equal(arr, np.asarray(pal.convert("RGB")))


def test_exif_orientation_applied_and_size_matches():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _save(img, "JPEG", exif=exif.tobytes(), quality=95)
    arr, notes = decode_image(data)
    assert arr.shape == (30, 20, 3) and notes == ["applied EXIF orientation 6"]
    assert image_size(data) == (20, 30)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image or unknown format"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt or truncated image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(DecodeError) as err:
        decode_image(data, name="x.png")
    assert err.value.reason == reason and "x.png" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated(fmt, keep):
    noisy = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    data = _save(Image.fromarray(noisy), fmt)
    with pytest.raises(DecodeError) as err:
        decode_image(data[: int(len(data) * keep)], name="t")
    assert err.value.reason == "corrupt or truncated image"


def test_png_without_iend_is_truncated():
    data = _save(Image.fromarray(RGB))
    with pytest.raises(DecodeError, match="IEND"):
        decode_image(data[:-12])


def test_zero_size_rejected():
    # a PNG header claiming 0x5 pixels
    data = bytearray(_save(Image.fromarray(RGB)))
    data[16:20] = (0).to_bytes(4, "big")
    with pytest.raises(DecodeError) as err:
        decode_image(bytes(data))
    assert err.value.reason == "zero-size image"


def test_decompression_bomb_guard():
    data = _save(Image.new("L", (200, 200)))
    with pytest.raises(DecodeError) as err:
        decode_image(data, max_pixels=10_000)
    assert err.value.reason == "too many pixels"


def test_masks_all_conventions():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert (decode_mask(encode_mask_png(m)) == m).all()
    assert (decode_mask(_save(Image.fromarray(m.astype(np.uint8)))) == m).all()  # 0/1
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[m, 0] = 200  # red only
    assert (decode_mask(_save(Image.fromarray(rgb))) == m).all()
    noisy = np.where(m, 240, 12).astype(np.uint8)  # JPEG-ish gray levels
    assert (decode_mask(_save(Image.fromarray(noisy))) == m).all()
    assert (decode_mask(_save(Image.fromarray(m).convert("1"))) == m).all()
    assert not decode_mask(_save(Image.new("L", (4, 4)))).any()


def test_encode_mask_png_is_one_channel_0_255():
    img = Image.open(io.BytesIO(encode_mask_png(np.eye(4))))
    assert img.mode == "L" and set(np.unique(np.asarray(img))) == {0, 255}
    with pytest.raises(ValueError, match="HxW"):
        encode_mask_png(np.zeros((2, 2, 3)))


def test_encode_image_round_trip():
    arr, _ = decode_image(encode_image(RGB, "png"))
    np.testing.assert_array_equal(arr, RGB)
    jpg, _ = decode_image(encode_image(RGB, "jpeg", quality=95))
    assert jpg.shape == RGB.shape
    with pytest.raises(ValueError, match="fmt"):
        encode_image(RGB, "bmp2")
    with pytest.raises(ValueError, match="uint8"):
        encode_image(RGB.astype(np.float32))
