"""Label Studio's brush masks: the RLE of `label_studio_sdk.converter.brush` (never a codec of our own).

Label Studio stores a brush region as the RLE of an RGBA image, flattened row by row; a pixel
belongs to the region when its alpha is > 0. label-studio-sdk is installed without its dependencies
(scripts/setup.sh: it pins opencv-python-headless < 4.13, bpiml uses 5.x); the brush module needs only
numpy and Pillow, and the converter package prints a missing-module line on import, silenced here.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

with contextlib.redirect_stdout(io.StringIO()):  # "No module named 'ijson'": the converter we do not use
    from label_studio_sdk.converter import brush


def encode(mask: np.ndarray) -> list[int]:
    """HxW bool mask -> Label Studio brush RLE (a list of ints)."""
    return [int(v) for v in brush.mask2rle(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))]


def decode(rle: object, width: int, height: int) -> np.ndarray:
    """Brush RLE -> HxW bool mask; ValueError when it is not an RLE of a width x height image."""
    if not isinstance(rle, list) or not rle or not all(isinstance(v, int) and 0 <= v < 256 for v in rle):
        raise ValueError("brush rle must be a non-empty list of byte values")
    try:
        flat = np.asarray(brush.decode_rle(rle))
    except (IndexError, ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"brush rle does not decode ({type(err).__name__}: {err})") from err
    if flat.size != width * height * 4:
        raise ValueError(f"brush rle holds {flat.size // 4} pixels, the image is {width}x{height} = {width * height}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0
