"""The fast SAM path: same weights, same math, fused attention and on-device preprocessing.

What changes against the stock path (`segment_anything` as published):

- Encoder attention runs through `F.scaled_dot_product_attention`, with SAM's decomposed
  relative-position bias (`rel_h + rel_w`, from MViTv2) passed as an additive `attn_mask`.
  `enable_fast_attention` swaps the class of each encoder `Attention` module in place: the
  parameters are the same tensors, only `forward` differs, so checkpoints load unchanged.
- bf16 autocast on GPU (the teacher turns it on for fast + cuda; on CPU the fast path stays fp32,
  which is how the test compares it with the stock path).
- Several images per encoder pass (both paths) and optional `torch.compile` (the teacher pads the last batch
  to a fixed size so a compiled encoder sees one shape).
- Images resized (bilinear, antialiased) and normalised on the device instead of through PIL.

Reference figures on one H100 (images/s, teacher alone, 1024x1024 inputs; the anchors this path
targets, quoted from the project's issue; `benchmarks/bench_teacher.py --device cuda --variant
vit_b vit_h --compile` measures them again):

| variant | stock | SDPA + bf16 | + torch.compile |
| ------- | ----- | ----------- | --------------- |
| ViT-B   | 52.5  | 97.3        | 247.5           |
| ViT-H   | 18.7  | 31.3        | 56.2            |
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (
    Attention,
    ImageEncoderViT,
    get_rel_pos,
)


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention bias.

    q: `B x nHead x (q_h*q_w) x C` (unscaled queries). Returns `B x nHead x (q_h*q_w) x (k_h*k_w)`,
    equal to what `add_decomposed_rel_pos` adds to the attention logits.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rel_h_table = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # q_h x k_h x C
    rel_w_table = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # q_w x k_w x C
    batch, heads, _, dim = q.shape
    r_q = q.reshape(batch, heads, q_h, q_w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rel_h_table)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rel_w_table)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # B x nH x q_h x q_w x k_h x k_w
    return bias.reshape(batch, heads, q_h * q_w, k_h * k_w)


class FastAttention(Attention):
    """SAM encoder attention through `scaled_dot_product_attention`; parameters as `Attention`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        # qkv: 3 x B x nHead x (H*W) x C
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out)


def enable_fast_attention(encoder: ImageEncoderViT) -> int:
    """Switch every encoder `Attention` to `FastAttention` in place; returns how many were switched.

    Only the class changes (same module objects, same parameter tensors), so weights, state_dict
    keys and devices are untouched.
    """
    switched = 0
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = FastAttention
            switched += 1
    return switched


def preprocess_on_device(
    image: np.ndarray, img_size: int, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """HxWx3 uint8 RGB -> (`3 x img_size x img_size` normalised, padded tensor, resized (h, w)).

    The longest side is resized to `img_size` (as `ResizeLongestSide`, but bilinear+antialias on
    the device of `pixel_mean` rather than PIL), then normalised and zero-padded bottom/right.
    """
    height, width = image.shape[:2]
    scale = img_size / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # e.g. Arrow-backed batches; torch.from_numpy wants a writable array
        image = image.copy()
    x = torch.from_numpy(image).to(pixel_mean.device, non_blocking=True)
    x = x.permute(2, 0, 1)[None].float()
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    x = (x[0] - pixel_mean) / pixel_std
    x = F.pad(x, (0, img_size - new_w, 0, img_size - new_h))
    return x, (new_h, new_w)
