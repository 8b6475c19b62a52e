"""MGFM step 2: gated integration of the projected scales.

Each scale gets a one-channel spatial gate G_i = sigmoid(conv3x3(F'_i)). The fused features are
A_base = sum_i G_i * F'_i and the mean gate G_avg = mean_i G_i is the real-time spatial prior.
With gating disabled (ablation) every G_i = 1: A_base is the plain sum and G_avg is all ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedIntegration(nn.Module):
    """[F'_i: Bx d x h x w] -> (A_base: Bx d x h x w, G_avg: Bx1xhxw)."""

    def __init__(self, width: int, num_scales: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.num_scales = num_scales
        self.gates = nn.ModuleList(nn.Conv2d(width, 1, kernel_size=3, padding=1) for _ in range(num_scales)) if enabled else None
        if self.gates is not None:
            for conv in self.gates:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)  # start at G_i = 0.5 everywhere

    def gate_maps(self, features: list[Tensor]) -> list[Tensor]:
        """Per-scale gates G_i: Bx1xhxw in (0, 1) (all ones when disabled)."""
        if self.gates is None:
            f = features[0]
            ones = torch.ones(f.shape[0], 1, f.shape[2], f.shape[3], dtype=f.dtype, device=f.device)
            return [ones] * len(features)
        return [torch.sigmoid(conv(f)) for conv, f in zip(self.gates, features)]

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(features) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} scales, got {len(features)}")
        if self.gates is None:
            a_base = torch.stack(features).sum(0)
            f = features[0]
            g_avg = torch.ones(f.shape[0], 1, f.shape[2], f.shape[3], dtype=f.dtype, device=f.device)
            return a_base, g_avg
        gates = self.gate_maps(features)
        a_base = sum(g * f for g, f in zip(gates, features))
        g_avg = torch.stack(gates).mean(0)
        return a_base, g_avg
