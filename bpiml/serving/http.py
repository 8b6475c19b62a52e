"""The serving API without Ray: request bytes -> image, probabilities -> answer, the bearer key.

    POST /predict            body: the image file (JPEG, PNG, any format `decode_image` reads)
         ?format=json        (default) {"score", "mask_area", "height", "width", "threshold", "mask_png"}:
                             mask_png is the 0/255 mask as base64 PNG at the image's size
         ?format=png         the 0/255 mask PNG itself
         ?format=probs       the probability map as 8-bit PNG (round(p * 255))
         ?format=npy         the probability map as float16 .npy
    GET  /healthz            {"status": "ok", "model": ..., "device": ...} (no key needed)

A request that cannot be served gets a 4xx with {"error": reason}: 400 undecodable or empty body,
413 too large (bytes or pixels), 401 missing or wrong key, 404 unknown route, 405 wrong method.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import numpy as np

from bpiml.data import imageio

FORMATS = ("json", "png", "probs", "npy")
MEDIA_TYPES = {"json": "application/json", "png": "image/png", "probs": "image/png", "npy": "application/octet-stream"}


class RequestError(Exception):
    """A request the service refuses: `status` (4xx) and a short `reason` for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


def error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode()


def check_key(authorization: str | None, key: str) -> None:
    """`Authorization: Bearer <key>` must match `key` (compared in constant time); empty `key`: open."""
    if not key:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise RequestError(401, "missing bearer key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise RequestError(401, "wrong bearer key")


def check_format(fmt: str | None) -> str:
    fmt = (fmt or "json").lower()
    if fmt not in FORMATS:
        raise RequestError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def decode_body(body: bytes, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Request body -> HxWx3 uint8 RGB; RequestError 400 (empty, not an image, broken) or 413 (too large)."""
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes, more than the {max_bytes} allowed")
    try:
        image, _ = imageio.decode_image(body, "request body", max_pixels=max_pixels)
    except imageio.DecodeError as err:
        raise RequestError(413 if err.reason == "too many pixels" else 400, str(err)) from None
    return image


def encode_answer(probs: np.ndarray, fmt: str, threshold: float) -> bytes:
    """One image's probability map (HxW float32) -> the response body in `fmt` (see module doc)."""
    if fmt == "npy":
        return imageio.encode_probs(probs, "npy")
    if fmt == "probs":
        return imageio.encode_probs(probs, "png")
    mask = probs > threshold
    png = imageio.encode_mask_png(mask)
    if fmt == "png":
        return png
    answer: dict[str, Any] = {"score": round(float(probs.max()), 6), "mask_area": round(float(mask.mean()), 6),
                              "height": int(probs.shape[0]), "width": int(probs.shape[1]), "threshold": threshold,
                              "mask_png": base64.b64encode(png).decode()}
    return json.dumps(answer).encode()
