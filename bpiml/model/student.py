"""The prompt-free student: TinyViT backbone + MGFM -> one-channel manipulation mask logits."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from bpiml.model.backbone import Backbone
from bpiml.model.config import StudentConfig
from bpiml.model.mgfm import MGFM, build_mgfm

logger = logging.getLogger(__name__)

OUT_STRIDE = 8  # MGFM works at stride 8 (28x28 at 224): keeps the student within 2.7 GFLOPs


class Student(nn.Module):
    """Bx3xHxW float in [0, 1] -> Bx1xHxW mask logits (normalisation happens inside)."""

    def __init__(self, config: StudentConfig, backbone: Backbone | None = None, mgfm: MGFM | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else Backbone(config.backbone, config.backbone_weights)
        self.mgfm = mgfm if mgfm is not None else build_mgfm(
            self.backbone.channels,
            self.backbone.strides,
            width=config.width,
            memory_slots=config.memory_slots,
            use_memory=config.use_memory,
            use_gating=config.use_gating,
            alpha=config.alpha,
            learn_alpha=config.learn_alpha,
            out_stride=OUT_STRIDE,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_aux(x)[0]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """-> (Bx1xHxW logits, {"gate_mean": Bx1xhxw, "memory_attention": BxNxK or absent})."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a Bx3xHxW image batch, got shape {tuple(x.shape)}")
        features = self.backbone(x)
        logits, aux = self.mgfm(features, (int(x.shape[-2]), int(x.shape[-1])))
        return logits, {k: v for k, v in aux.items() if v is not None}


def build_student(config: StudentConfig | None = None) -> Student:
    """Validate `config` (default: StudentConfig()) and build the student."""
    config = config if config is not None else StudentConfig()
    config.validate()
    student = Student(config)
    logger.info("built student %s (%s): %.2fM parameters", config.variant, config.backbone,
                sum(p.numel() for p in student.parameters()) / 1e6)
    return student
