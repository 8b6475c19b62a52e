"""The student's configuration (`TrainConfig.model`, the `--model-*` flags): no torch at import, so a
job's `--help` stays fast; the model itself is `bpiml.model.student`."""

from __future__ import annotations

from dataclasses import dataclass

from bpiml.config import BaseConfig, ConfigError, check_range, field


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
        import timm  # noqa: PLC0415 - imports torch: not before a job's command line is parsed

        if not isinstance(self.backbone, str) or not timm.is_model(self.backbone):
            raise ConfigError("backbone", f"must be a timm model name (e.g. 'tiny_vit_5m_224'), got {self.backbone!r}")
        if self.backbone_weights is not None and (not isinstance(self.backbone_weights, str) or not self.backbone_weights):
            raise ConfigError("backbone_weights", f"must be a path/URI or None, got {self.backbone_weights!r}")
        for key in ("width", "memory_slots", "img_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, f"must be a positive integer, got {value!r}")
        if self.img_size % 32:
            raise ConfigError("img_size", f"must be a multiple of 32, got {self.img_size}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ConfigError("alpha", f"must be a number in [0, 1], got {self.alpha!r}")
        check_range("alpha", float(self.alpha), 0.0, 1.0)
        if self.learn_alpha and self.alpha in (0, 1):
            raise ConfigError("alpha", f"must be strictly inside (0, 1) when learn_alpha is set, got {self.alpha}")
        for key in ("use_memory", "use_gating", "learn_alpha"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, f"must be true or false, got {getattr(self, key)!r}")

    @property
    def variant(self) -> str:
        """Ablation name: full, no-memory, no-gating or baseline."""
        return {(True, True): "full", (False, True): "no-memory", (True, False): "no-gating"}.get(
            (self.use_memory, self.use_gating), "baseline"
        )
