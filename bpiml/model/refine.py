"""MGFM step 5: refine A_final into one-channel mask logits at the input size.

Two 3x3 conv blocks at the MGFM resolution (stride 8), then a light stride-4 stage that adds
the backbone's finest map F1 (1x1 projection) and applies a depthwise-separable block, then a
1x1 conv to one logit channel and a bilinear upsampling to the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_act(cin: int, cout: int, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class RefineHead(nn.Module):
    """A_final: Bx d x h x w (+ skip F1: Bx C1 x 2h x 2w) -> Bx1xHxW logits."""

    def __init__(self, width: int, hidden: int = 32, skip_channels: int = 0) -> None:
        super().__init__()
        self.coarse = nn.Sequential(conv_bn_act(width, hidden), conv_bn_act(hidden, hidden))
        self.skip = nn.Sequential(nn.Conv2d(skip_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden)) if skip_channels else None
        self.fine = nn.Sequential(conv_bn_act(hidden, hidden, groups=hidden), conv_bn_act(hidden, hidden, kernel=1)) if skip_channels else None
        self.logits = nn.Conv2d(hidden, 1, kernel_size=1)

    def forward(self, x: Tensor, out_size: tuple[int, int], skip: Tensor | None = None) -> Tensor:
        y = self.coarse(x)
        if self.skip is not None and self.fine is not None:
            if skip is None:
                raise ValueError("RefineHead was built with a skip connection: pass the finest feature map")
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False) + self.skip(skip)
            y = self.fine(y)
        return F.interpolate(self.logits(y), size=out_size, mode="bilinear", align_corners=False)
