"""Image and mask bytes <-> arrays, defensively.

`decode_image` turns any common still-image file into HxWx3 uint8 RGB and says what it converted
(grayscale, alpha, 16-bit, palette, CMYK, EXIF rotation). Bad files raise `DecodeError` with a short
`reason` that pipelines can put in a rejects table. Truncated JPEG/PNG are detected (Pillow's
`LOAD_TRUNCATED_IMAGES` is left off and pixels are forced to load); decompression bombs are refused.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps

from bpiml.data import storage

logger = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000  # refuse images above this many pixels (decompression bombs)
_EXIF_ORIENTATION = 0x0112


class DecodeError(ValueError):
    """A file that cannot be decoded; `.reason` is short and machine-friendly."""

    def __init__(self, reason: str, name: str = "", detail: str = ""):
        self.reason = reason
        self.name = name
        message = f"{name}: {reason}" if name else reason
        super().__init__(f"{message} ({detail})" if detail else message)


_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_PNG = _MAGIC[0]


def _unidentified(data: bytes, name: str) -> DecodeError:
    """A file Pillow cannot identify: a known signature means it is broken, else it is not an image."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and bytes(4) in (data[16:20], data[20:24]):
        return DecodeError("zero-size image", name)
    if data.startswith(_MAGIC):
        return DecodeError("corrupt or truncated image", name, "bad header")
    return DecodeError("not an image or unknown format", name)


_RAW_MODE = "bpiml_rawmode"  # image info key: how the file stores its pixels, read before load()


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open and fully load the first frame."""
    if not data:
        raise DecodeError("empty file", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise DecodeError("zero-size image", name, f"{width}x{height}")
            if width * height > max_pixels:
                raise DecodeError("too many pixels", name, f"{width}x{height} > {max_pixels} pixels")
            tiles = getattr(img, "tile", None) or []
            raw = tiles[0].args if tiles and isinstance(tiles[0].args, str) else ""
            img.load()  # clears `tile`: the file's raw layout (`RGB;16B`: 16 bits a channel) is kept in info
            img.info[_RAW_MODE] = raw
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise DecodeError("too many pixels", name, str(err)) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError("corrupt or truncated image", name, f"{type(err).__name__}: {err}") from None
    if data.startswith(_PNG) and b"IEND" not in data[-16:]:
        raise DecodeError("corrupt or truncated image", name, "PNG has no IEND chunk")
    return img


def _apply_orientation(img: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broken EXIF must not sink a readable image
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        img = ImageOps.exif_transpose(img)
        notes.append(f"applied EXIF orientation {orientation}")
    return img


def _to_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        if ";16" in img.info.get(_RAW_MODE, ""):  # Pillow keeps the high byte of 16-bit RGB
            notes.append("scaled 16-bit to 8-bit")
        return np.asarray(img)
    if mode in ("L", "1"):
        notes.append("converted grayscale to RGB" if mode == "L" else "converted 1-bit to RGB")
        return np.asarray(img.convert("RGB"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":  # floats in [0, 1] or in [0, 255]
            scale = 1.0 / 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        else:
            scale = 257.0
        arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        notes.append("scaled 16-bit to 8-bit" if mode != "F" else "scaled float to 8-bit")
        notes.append("converted grayscale to RGB")
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("P", "PA"):
        notes.append("converted palette to RGB")
        return np.asarray(img.convert("RGBA"))[..., :3]
    if mode in ("RGBA", "LA", "RGBa", "La", "RGBX"):
        if mode != "RGBX":
            notes.append(f"dropped alpha ({mode})")
        if mode.startswith("L"):
            notes.append("converted grayscale to RGB")
        return np.asarray(img.convert("RGBA"))[..., :3] if mode != "RGBa" else np.asarray(img)[..., :3]
    notes.append(f"converted {mode} to RGB")
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, name: str = "", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Bytes -> (HxWx3 uint8 RGB, notes of conversions done). Raises DecodeError."""
    img = _open(data, name, max_pixels)
    notes: list[str] = []
    img = _apply_orientation(img, notes)
    try:
        rgb = _to_rgb(img, notes)
    except (OSError, ValueError) as err:
        raise DecodeError("unsupported pixel format", name, f"{img.mode}: {err}") from None
    return np.ascontiguousarray(rgb, dtype=np.uint8), notes


def decode_mask(data: bytes, name: str = "", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes -> HxW bool. 0/255 (or noisy JPEG) masks: > 127; 0/1 and label masks 0..N: > 0; RGB: any channel."""
    img = _apply_orientation(_open(data, name, max_pixels), [])
    if img.mode == "1":
        return np.asarray(img, dtype=bool).copy()
    if img.mode in ("P", "PA"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = arr.astype(np.float64) / 257.0
    if arr.ndim == 3:
        channels = arr.shape[2]
        arr = arr[..., : 3 if channels >= 3 else 1]
        arr = arr.max(axis=2)
    # 0/255 masks (and noisy JPEG ones) are split at 127; label masks 0..N (N < 128) and 0/1 masks at 0.
    threshold = 0 if arr.max(initial=0) < 128 else 127
    return arr > threshold


def encode_mask_png(mask: np.ndarray) -> bytes:
    """HxW mask (bool or numbers, > 0 is foreground) -> one-channel 0/255 PNG bytes."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty HxW array, got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


PROB_FORMATS = ("png", "npy", "none")  # probability maps: 8-bit PNG (p * 255), float16 .npy, or not written


def encode_probs(prob: np.ndarray, fmt: str) -> bytes:
    """HxW probabilities in [0, 1] -> `png` (one channel, round(p * 255)) or `npy` (float16) bytes."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"probability map must be a non-empty HxW array, got shape {prob.shape}")
    if fmt == "png":
        return encode_image((np.clip(prob, 0.0, 1.0) * 255).round().astype(np.uint8), "png")
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, prob.astype(np.float16), allow_pickle=False)
        return buf.getvalue()
    raise ValueError(f"probability format must be png or npy, got {fmt!r}")


def decode_probs(data: bytes, name: str = "") -> np.ndarray:
    """`encode_probs` bytes (PNG or .npy) -> HxW float32 probabilities in [0, 1]."""
    if data[:6] == b"\x93NUMPY":
        return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    return decode_image(data, name)[0][..., 0].astype(np.float32) / 255.0


_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """HxWx3 (or HxW) uint8 -> encoded bytes (`jpeg`, `png` or `webp`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be HxWx3 or HxW uint8, got shape {image.shape} dtype {image.dtype}")
    pil_fmt = _FORMATS.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"fmt must be one of {sorted(_FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    kwargs = {"quality": int(quality)} if pil_fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(image).save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


def image_size(data: bytes, name: str = "") -> tuple[int, int]:
    """(width, height) as `decode_image` would return it (EXIF orientation applied), from the header only."""
    if not data:
        raise DecodeError("empty file", name)
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Image.UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError("corrupt or truncated image", name, f"{type(err).__name__}: {err}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as an HxWx3 uint8 array; ValueError naming the shape and dtype otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


def load_image(uri: str) -> tuple[np.ndarray, list[str]]:
    return decode_image(storage.read_bytes(uri), name=uri)


def load_mask(uri: str) -> np.ndarray:
    return decode_mask(storage.read_bytes(uri), name=uri)
