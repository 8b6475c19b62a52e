"""The prompt-free student: TinyViT backbone + MGFM -> one-channel manipulation mask logits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import timm
from torch import Tensor, nn

from bpiml.config import BaseConfig, check_range, field
from bpiml.model.backbone import Backbone
from bpiml.model.mgfm import MGFM, build_mgfm

logger = logging.getLogger(__name__)

OUT_STRIDE = 8  # MGFM works at stride 8 (28x28 at 224): keeps the student within 2.7 GFLOPs


@dataclass
class StudentConfig(BaseConfig):
    backbone: str = field("tiny_vit_5m_224", help="timm model name of the multi-scale backbone")
    backbone_weights: str | None = field("auto", help="auto (ImageNet-pretrained where it can be had, else random "
                                         "init with a warning), imagenet (or fail), none, or a state dict path/s3:// URI")
    width: int = field(96, help="common MGFM width d")
    memory_slots: int = field(64, help="number K of learnable memory prototypes")
    use_memory: bool = field(True, help="use the memory bank (False: no-memory ablation)")
    use_gating: bool = field(True, help="use per-scale gates (False: no-gating ablation, G_i = 1)")
    alpha: float = field(0.5, help="dual-guidance weight of the gated prior vs the memory prior, in [0, 1]")
    learn_alpha: bool = field(False, help="learn alpha (as sigmoid of a logit) starting from `alpha`")
    img_size: int = field(224, help="square training/inference input size (multiple of 32)")

    def validate(self) -> None:
        if not isinstance(self.backbone, str) or not timm.is_model(self.backbone):
            raise ValueError(f"backbone must be a timm model name (e.g. 'tiny_vit_5m_224'), got {self.backbone!r}")
        if self.backbone_weights is not None and (not isinstance(self.backbone_weights, str) or not self.backbone_weights):
            raise ValueError(f"backbone_weights must be a path/URI or None, got {self.backbone_weights!r}")
        for key in ("width", "memory_slots", "img_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {self.img_size}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        check_range("alpha", float(self.alpha), 0.0, 1.0)
        if self.learn_alpha and self.alpha in (0, 1):
            raise ValueError(f"alpha must be strictly inside (0, 1) when learn_alpha is set, got {self.alpha}")
        for key in ("use_memory", "use_gating", "learn_alpha"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")

    @property
    def variant(self) -> str:
        """Ablation name: full, no-memory, no-gating or baseline."""
        return {(True, True): "full", (False, True): "no-memory", (True, False): "no-gating"}.get(
            (self.use_memory, self.use_gating), "baseline"
        )


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
