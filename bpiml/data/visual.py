"""Pictures of masks: overlays, side-by-side strips and the labelled panels of the visual report.

All functions take HxWx3 uint8 RGB images and HxW masks (bool, or probabilities in [0, 1]) and
return HxWx3 uint8 images; nothing here writes files.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from bpiml.data.imageio import check_image


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.45,
            contour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """HxWx3 uint8 with `mask` tinted in `color` and its contour drawn in `contour` (1-3 px by image size)."""
    image = check_image(image)
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask > 0.5
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image size {image.shape[:2]}")
    out = image.astype(np.float32)
    tint = np.array(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out = out.round().clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, color=tuple(int(c) for c in contour), thickness=thickness)
    return out


def overlay_strip(image: np.ndarray, *masks: np.ndarray) -> np.ndarray:
    """image (HxWx3 uint8) | mask | mask ... side by side as one Hx(W*(1+n))x3 uint8 image.

    Masks (HxW bool or probabilities in [0, 1]) are shown in gray levels; each one must match the
    image's height and width.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    panels = [image.astype(np.uint8)]
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, image has {image.shape[:2]}")
        gray = (np.clip(mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        panels.append(np.repeat(gray[:, :, None], 3, axis=2))
    return np.concatenate(panels, axis=1)


PANELS = ("image", "boxes", "pseudo mask", "prediction", "ground truth")
PANEL_HEIGHT = 160
LABEL_HEIGHT = 18


# --- panels and the grid ---------------------------------------------------------------------
def _fit(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_NEAREST)


def _blank(height: int, width: int, text: str = "n/a") -> np.ndarray:
    panel = np.full((height, width, 3), 200, np.uint8)
    cv2.putText(panel, text, (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
    return panel


def _boxes_panel(image: np.ndarray, boxes: Sequence[Sequence[float]] | None) -> np.ndarray | None:
    if boxes is None:
        return None
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 250))
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (int(round(x1)) - 1, int(round(y1)) - 1), (0, 220, 0), thickness)
    return out


def _mask_panel(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask > 0.5
    if mask.shape != image.shape[:2]:
        mask = cv2.resize(mask.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return overlay(image, mask)


def sample_row(sample: Mapping[str, Any], height: int = PANEL_HEIGHT) -> np.ndarray:
    """One HxWx3 uint8 strip: the five panels side by side, each labelled."""
    image = np.asarray(sample["image"])
    panels = [image, _boxes_panel(image, sample.get("boxes")), _mask_panel(image, sample.get("pseudo")),
              _mask_panel(image, sample.get("pred")), _mask_panel(image, sample.get("gt"))]
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    cells = []
    for title, panel in zip(PANELS, panels):
        body = _fit(panel, height) if panel is not None else _blank(height, width)
        label = np.full((LABEL_HEIGHT, body.shape[1], 3), 255, np.uint8)
        cv2.putText(label, title, (3, LABEL_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cells += [np.vstack([label, body]), np.full((height + LABEL_HEIGHT, 4, 3), 255, np.uint8)]
    return np.hstack(cells[:-1])


def grid(rows: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Stack sample strips (padded to one width) with a caption line above each."""
    width = max(r.shape[1] for r in rows)
    parts = []
    for row, caption in zip(rows, captions):
        head = np.full((22, width, 3), 255, np.uint8)
        cv2.putText(head, caption[:120], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        parts += [head, np.hstack([row, pad])]
    return np.vstack(parts)


