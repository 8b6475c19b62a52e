"""Image degradations for robustness evaluation: JPEG re-compression, resizing, blur, noise.

A degradation is written `kind:value`: `jpeg:70` (re-encode at quality 70), `resize:0.5` (scale both
sides by 0.5; the prediction is compared with the GT mask at its own size), `blur:3` (Gaussian blur,
sigma 3 px), `noise:10` (additive Gaussian noise, sigma 10 grey levels; seeded by the image content
so runs are reproducible). `none` is the clean image. Only the image is degraded, never the mask.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = {
    # kind: (low, high, help)
    "jpeg": (1.0, 100.0, "JPEG quality"),
    "resize": (0.05, 4.0, "scale factor"),
    "blur": (0.1, 50.0, "Gaussian sigma in pixels"),
    "noise": (0.1, 255.0, "Gaussian noise sigma in grey levels"),
}
CLEAN = "none"


@dataclass(frozen=True)
class Degradation:
    kind: str  # "none", "jpeg", "resize", "blur" or "noise"
    value: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == CLEAN:
            return CLEAN
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.kind}:{value}"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return apply(image, self)


def parse(spec: str) -> Degradation:
    """`jpeg:70` -> Degradation("jpeg", 70.0); ValueError naming the spec on a bad kind or value."""
    text = spec.strip().lower()
    if text in (CLEAN, "clean", ""):
        return Degradation(CLEAN)
    kind, sep, raw = text.partition(":")
    if kind not in KINDS or not sep:
        raise ValueError(f"degradation {spec!r}: expected one of {sorted(KINDS)} as kind:value (e.g. jpeg:70)")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"degradation {spec!r}: value {raw!r} is not a number") from None
    low, high, what = KINDS[kind]
    if not low <= value <= high:
        raise ValueError(f"degradation {spec!r}: {what} must be in [{low}, {high}], got {value}")
    if kind == "jpeg" and not value.is_integer():
        raise ValueError(f"degradation {spec!r}: JPEG quality must be an integer")
    return Degradation(kind, value)


def parse_list(specs: list[str] | tuple[str, ...]) -> list[Degradation]:
    """Specs (also comma-separated) -> degradations, the clean one first, duplicates dropped."""
    out = [Degradation(CLEAN)]
    for spec in specs:
        for part in str(spec).split(","):
            if part.strip():
                d = parse(part)
                if d not in out:
                    out.append(d)
    return out


def apply(image: np.ndarray, degradation: Degradation) -> np.ndarray:
    """HxWx3 uint8 -> degraded HxWx3 uint8 (size changes only for `resize`)."""
    kind, value = degradation.kind, degradation.value
    if kind == CLEAN:
        return image
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(value)])
        if not ok:
            raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if kind == "resize":
        h, w = image.shape[:2]
        size = (max(1, round(w * value)), max(1, round(h * value)))
        interp = cv2.INTER_AREA if value < 1 else cv2.INTER_LINEAR
        return cv2.resize(image, size, interpolation=interp)
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), sigmaX=value, sigmaY=value)
    if kind == "noise":
        rng = np.random.default_rng(zlib.crc32(image[:64, :64].tobytes()))
        noisy = image.astype(np.float32) + rng.normal(0.0, value, image.shape).astype(np.float32)
        return noisy.round().clip(0, 255).astype(np.uint8)
    raise ValueError(f"unknown degradation kind {kind!r}")
