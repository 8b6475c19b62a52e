"""Validation on a worker's shard: per-image pixel metrics against GT, memory-bank usage, overlays.

Each worker adds up its images into a `ValSums`; the sums are all-reduced so every rank reports
the same epoch metrics.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bpiml.data.metrics import image_row
from bpiml.data.visual import overlay_strip
from bpiml.model.memory_bank import memory_usage_stats
from bpiml.train.batches import to_input


@dataclasses.dataclass
class ValSums:
    f1: float = 0.0
    n_f1: int = 0
    iou: float = 0.0
    n_iou: int = 0
    auc: float = 0.0
    n_auc: int = 0
    slots_used: float = 0.0  # x images
    entropy: float = 0.0  # x images
    entropy_normalized: float = 0.0  # x images
    n_attention: int = 0  # images with memory attention
    unreadable: int = 0  # validation images that could not be read
    seen: int = 0  # validation images looked at

    def add_image(self, prob: np.ndarray, gt: np.ndarray) -> None:
        row = image_row(prob, gt)
        for key in ("f1", "iou", "auc"):
            if not math.isnan(row[key]):
                setattr(self, key, getattr(self, key) + float(row[key]))
                setattr(self, f"n_{key}", getattr(self, f"n_{key}") + 1)

    def add_attention(self, attention: torch.Tensor, images: int) -> None:
        stats = memory_usage_stats(attention)
        self.slots_used += stats["slots_used"] * images
        self.entropy += stats["attention_entropy"] * images
        self.entropy_normalized += stats["attention_entropy_normalized"] * images
        self.n_attention += images

    def to_list(self) -> list[float]:
        return [float(v) for v in dataclasses.astuple(self)]

    @classmethod
    def from_list(cls, values: list[float]) -> ValSums:
        kinds = [f.type for f in dataclasses.fields(cls)]
        return cls(*[int(round(v)) if kind in ("int", int) else v for v, kind in zip(values, kinds)])

    def means(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else math.nan

        return {"val_f1": ratio(self.f1, self.n_f1), "val_iou": ratio(self.iou, self.n_iou),
                "val_auc": ratio(self.auc, self.n_auc), "slots_used": ratio(self.slots_used, self.n_attention),
                "attention_entropy": ratio(self.entropy, self.n_attention),
                "attention_entropy_normalized": ratio(self.entropy_normalized, self.n_attention),
                "val_unreadable": float(self.unreadable)}


@torch.no_grad()
def validate(model: nn.Module, batches: Any, device: torch.device, autocast: Callable[[], AbstractContextManager],
             channels_last: bool, overlays: int = 0) -> tuple[ValSums, list[tuple[str, np.ndarray]]]:
    """Sums over this worker's validation batches, and up to `overlays` (id, image | target | GT | prediction)."""
    model.eval()
    sums = ValSums()
    strips: list[tuple[str, np.ndarray]] = []
    for batch in batches:
        ok = np.asarray(batch["ok"], bool)
        sums.seen += len(ok)
        sums.unreadable += int((~ok).sum())
        if not ok.any():
            continue
        x = to_input(batch["image"][ok], device, channels_last)
        with autocast():
            logits, aux = model.forward_with_aux(x)
        prob = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        for j, i in enumerate(np.flatnonzero(ok)):
            if batch["has_gt"][i]:
                sums.add_image(prob[j], batch["gt"][i].astype(bool))
            if len(strips) < overlays:
                gt = batch["gt"][i] if batch["has_gt"][i] else batch["target"][i]
                strips.append((str(batch["id"][i]), overlay_strip(batch["image"][i], batch["target"][i], gt, prob[j])))
        if aux.get("memory_attention") is not None:
            sums.add_attention(aux["memory_attention"], int(ok.sum()))
    return sums, strips
