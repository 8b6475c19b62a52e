"""MGFM step 4: dual guidance of the real-time prior (gates) and the long-term prior (memory).

A_final = alpha * (A_base * G_avg) + (1 - alpha) * A_mem. Alpha is fixed, or learnable as
sigmoid(logit) starting from the configured value. Without memory: A_final = A_base * G_avg.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DualGuidance(nn.Module):
    """(A_base, G_avg, A_mem | None) -> A_final, all Bx d x h x w (G_avg: Bx1xhxw)."""

    def __init__(self, alpha: float = 0.5, learn_alpha: bool = False) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if learn_alpha and alpha in (0.0, 1.0):
            raise ValueError(f"a learnable alpha must start strictly inside (0, 1), got {alpha}")
        self.learn_alpha = learn_alpha
        self.fixed_alpha = float(alpha)
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha / (1.0 - alpha)))) if learn_alpha else None

    def alpha(self) -> Tensor | float:
        return torch.sigmoid(self.alpha_logit) if self.alpha_logit is not None else self.fixed_alpha

    def forward(self, a_base: Tensor, g_avg: Tensor, a_mem: Tensor | None) -> Tensor:
        guided = a_base * g_avg
        if a_mem is None:
            return guided
        alpha = self.alpha()
        if isinstance(alpha, Tensor):
            alpha = alpha.to(guided.dtype)
        return alpha * guided + (1 - alpha) * a_mem
