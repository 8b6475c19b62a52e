"""MGFM step 3: a bank of K learnable prototypes that the fused features query.

Each spatial position of A_base is a query: q = W_q LayerNorm(a). Its similarity to the K
prototype vectors P (K x d) is the scaled dot product q . P_k / sqrt(d); a softmax over the K
slots gives the attention, and the read-out sum_k attn_k P_k (projected by W_o) is the long-term
prior A_mem, shaped like A_base.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MemoryBank(nn.Module):
    """A_base: Bx d x h x w -> (A_mem: Bx d x h x w, attention: Bx N x K with N = h*w)."""

    def __init__(self, width: int, slots: int) -> None:
        super().__init__()
        self.width = width
        self.slots = slots
        self.prototypes = nn.Parameter(torch.randn(slots, width))
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        b, d, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # B x N x d
        q = self.query(self.norm(tokens))
        logits = torch.matmul(q, self.prototypes.to(q.dtype).t()) * self.scale  # B x N x K
        attention = torch.softmax(logits.float(), dim=-1)
        read = torch.matmul(attention.to(q.dtype), self.prototypes.to(q.dtype))  # B x N x d
        a_mem = self.out(read).transpose(1, 2).reshape(b, d, h, w)
        return a_mem, attention


def memory_usage_stats(attention: Tensor, min_share: float = 0.01) -> dict[str, float]:
    """How the K slots are used, from a ... x K softmax attention (e.g. B x N x K).

    - `slots_used`: slots that are the argmax for at least `min_share` (1%) of all queries
      (every query of every image counts once);
    - `attention_entropy`: mean over queries of the entropy of the slot distribution, in nats;
    - `attention_entropy_normalized`: that entropy / log K (1 = uniform, 0 = one-hot).
    """
    if attention.dim() < 2:
        raise ValueError(f"attention must be ... x K, got shape {tuple(attention.shape)}")
    probs = attention.detach().float().reshape(-1, attention.shape[-1])
    k = probs.shape[-1]
    winners = torch.bincount(probs.argmax(-1), minlength=k).float()
    used = int((winners >= min_share * probs.shape[0]).sum().item())
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean().item()
    return {
        "slots_used": float(used),
        "attention_entropy": float(entropy),
        "attention_entropy_normalized": float(entropy / math.log(k)) if k > 1 else 0.0,
    }
