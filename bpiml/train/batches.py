"""From a numpy batch of decoded samples to the tensors the student trains on."""

from __future__ import annotations

import numpy as np
import torch


def to_input(images: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """B x S x S x 3 uint8 -> B x 3 x S x S float in [0, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_target(masks: np.ndarray, device: torch.device) -> torch.Tensor:
    """B x S x S (0/1) -> B x 1 x S x S float on `device`."""
    return torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).to(device, non_blocking=True)[:, None]
