"""MGFM step 1: project the backbone's F1..F4 to a common width d and one resolution.

The common resolution is the backbone stride `out_stride` (8 by default: 28x28 at 224x224,
chosen so that the whole student stays within the paper's 2.7 GFLOPs budget). Each scale gets a
1x1 convolution to width d, a resize to the target grid and a BatchNorm. Finer scales are
average-pooled before the projection and coarser scales projected before the bilinear
upsampling (the two commute for a 1x1 convolution; this order is the cheaper one).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ScaleProjection(nn.Module):
    """One scale: Bx C_in x h_i x w_i -> Bx d x h x w."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            y = self.proj(x)
        elif x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            y = self.proj(F.adaptive_avg_pool2d(x, size))
        else:
            y = F.interpolate(self.proj(x), size=size, mode="bilinear", align_corners=False)
        return self.norm(y)


class MultiScalePreprocess(nn.Module):
    """[F1..F4] (channels `in_channels`, strides `strides`) -> [F'1..F'4], each Bx d x H/s x W/s."""

    def __init__(self, in_channels: list[int], strides: list[int], width: int, out_stride: int = 8) -> None:
        super().__init__()
        if out_stride not in strides:
            raise ValueError(f"out_stride must be one of the backbone strides {strides}, got {out_stride}")
        self.strides = list(strides)
        self.out_stride = out_stride
        self.target_index = self.strides.index(out_stride)
        self.width = width
        self.scales = nn.ModuleList(ScaleProjection(c, width) for c in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} feature maps, got {len(features)}")
        size = (int(features[self.target_index].shape[-2]), int(features[self.target_index].shape[-1]))
        return [scale(f, size) for scale, f in zip(self.scales, features)]
