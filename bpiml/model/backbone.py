"""TinyViT backbone as a multi-scale feature extractor (strides 4/8/16/32).

The timm model is built with `pretrained=False` and its classifier head pruned; channel counts and
strides come from the model's own `feature_info`. Its initial weights are what `weights` names
(`bpiml.model.pretrained`: the ImageNet-pretrained weights by default where they can be had, random
init, or a state dict file).
ImageNet normalisation (mean/std from the model's pretrained config) lives inside as buffers,
so callers feed Bx3xHxW floats in [0, 1].
"""

from __future__ import annotations

import logging
import re
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from bpiml.data import cache
from bpiml.model import pretrained

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_PREFIXES = ("module.", "backbone.model.", "backbone.", "model.")


class Backbone(nn.Module):
    """timm model -> list of feature maps [F1..F4], Fi: Bx C_i x H/s_i x W/s_i."""

    def __init__(self, name: str = "tiny_vit_5m_224", weights: str | None = pretrained.AUTO) -> None:
        super().__init__()
        model = timm.create_model(name, pretrained=False, num_classes=0)
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise ValueError(f"backbone {name!r} does not expose multi-scale features (forward_intermediates)")
        info = list(model.feature_info)
        model.prune_intermediate_layers(indices=len(info), prune_head=True)
        self.name = name
        self.model = model
        self.channels: list[int] = [int(f["num_chs"]) for f in info]
        self.strides: list[int] = [int(f["reduction"]) for f in info]
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        resolved = pretrained.resolve(weights, name)
        self.weights_source, self.weights_sha256 = resolved.source, resolved.sha256
        if resolved.path:
            self.load_weights(resolved.path)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: Bx3xHxW in [0, 1] (uint8 0..255 accepted) -> [Bx C_i x ceil(H/s_i) x ceil(W/s_i)]."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = (x - self.mean) / self.std
        return list(self.model.forward_intermediates(x, intermediates_only=True))

    def load_weights(self, uri: str) -> None:
        """Load a state_dict from a local path or s3:// URI (safetensors, or torch.load with weights_only=True).

        Accepts the backbone's own state_dict, a timm checkpoint of the full classifier (head
        keys dropped), a `features_only` state_dict (`stages_0.` keys), and checkpoints wrapped
        in {"state_dict"|"model": ...} or prefixed with `module.` / `backbone.`.
        """
        path = cache.local_copy(uri)
        try:
            raw = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu",
                                                                                   weights_only=True)
        except Exception as err:
            raise ValueError(f"backbone weights {uri}: cannot load as a torch state_dict: {err}") from err
        state = _normalize_state_dict(raw, uri)
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"backbone weights {uri} do not match {self.name}: "
                f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
            )
        logger.info("loaded %d backbone tensors from %s", len(state), uri)


def _normalize_state_dict(raw: Any, uri: str) -> dict[str, Tensor]:
    while isinstance(raw, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if k in raw and isinstance(raw[k], dict)), None)
        if wrapper is None:
            break
        raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"backbone weights {uri}: expected a mapping of tensor names to tensors")
    state: dict[str, Tensor] = dict(raw)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "classifier."))}
    # timm `features_only` wrappers flatten `stages.0` into `stages_0`.
    return {re.sub(r"^stages_(\d+)\.", r"stages.\1.", k): v for k, v in state.items()}
