"""Memory-Guided Gated Fusion Module: multi-scale features -> mask logits.

    F1..F4 --preprocess--> F'1..F'4 --gating--> A_base, G_avg --memory--> A_mem
    A_final = dual_guidance(A_base, G_avg, A_mem) --refine(+F1)--> Bx1xHxW logits

The submodules are passed in (see `build_mgfm`); `memory=None` is the no-memory ablation and a
disabled `GatedIntegration` the no-gating one (both together: the plain multi-scale baseline).
"""

from __future__ import annotations

from torch import Tensor, nn

from bpiml.model.gating import GatedIntegration
from bpiml.model.guidance import DualGuidance
from bpiml.model.memory_bank import MemoryBank
from bpiml.model.projection import MultiScalePreprocess
from bpiml.model.refine import RefineHead


class MGFM(nn.Module):
    def __init__(
        self,
        preprocess: MultiScalePreprocess,
        gating: GatedIntegration,
        memory: MemoryBank | None,
        fusion: DualGuidance,
        refine: RefineHead,
        skip_index: int | None = 0,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.gating = gating
        self.memory = memory
        self.fusion = fusion
        self.refine = refine
        self.skip_index = skip_index

    def forward(self, features: list[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor | None]]:
        """features: [Bx C_i x h_i x w_i] -> (Bx1x out_size logits, aux).

        aux: "gate_mean" Bx1xhxw (G_avg), "memory_attention" BxNxK (None without memory).
        """
        projected = self.preprocess(features)
        a_base, g_avg = self.gating(projected)
        a_mem, attention = self.memory(a_base) if self.memory is not None else (None, None)
        a_final = self.fusion(a_base, g_avg, a_mem)
        skip = features[self.skip_index] if self.skip_index is not None else None
        logits = self.refine(a_final, out_size, skip)
        return logits, {"gate_mean": g_avg, "memory_attention": attention}


def build_mgfm(
    in_channels: list[int],
    strides: list[int],
    width: int = 96,
    memory_slots: int = 64,
    use_memory: bool = True,
    use_gating: bool = True,
    alpha: float = 0.5,
    learn_alpha: bool = False,
    out_stride: int = 8,
    refine_hidden: int = 32,
) -> MGFM:
    """An MGFM for a backbone with `in_channels` / `strides`; the finest scale feeds the refine skip."""
    finest = min(range(len(strides)), key=lambda i: strides[i])
    use_skip = strides[finest] < out_stride
    return MGFM(
        preprocess=MultiScalePreprocess(in_channels, strides, width, out_stride),
        gating=GatedIntegration(width, len(in_channels), enabled=use_gating),
        memory=MemoryBank(width, memory_slots) if use_memory else None,
        fusion=DualGuidance(alpha, learn_alpha and use_memory),
        refine=RefineHead(width, refine_hidden, in_channels[finest] if use_skip else 0),
        skip_index=finest if use_skip else None,
    )
