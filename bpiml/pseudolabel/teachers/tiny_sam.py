"""A tiny SAM with random weights, for tests and CPU benchmarks (never for real pseudo labels).

Built from segment_anything's own modules with SAM's structure (windowed + global attention
with decomposed relative positions, prompt encoder, two-way transformer mask decoder), only
smaller: a 256x256 input, 16x16 embedding grid, 2 encoder blocks of width 64. One forward pass
takes milliseconds on a CPU. The SAM teacher loads it through its real checkpoint path as the
variant "tiny".
"""

from __future__ import annotations

import io
from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from bpiml.data import storage

TINY_IMG_SIZE = 256  # model input side (SAM: 1024)
TINY_PATCH = 16  # patch size, as SAM
PROMPT_DIM = 256  # prompt / embedding channels, as SAM


def build_tiny_sam(seed: int = 0) -> Sam:
    """A randomly initialised tiny SAM (eval mode); the same `seed` gives the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        grid = TINY_IMG_SIZE // TINY_PATCH
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=TINY_IMG_SIZE,
                patch_size=TINY_PATCH,
                embed_dim=64,
                depth=2,
                num_heads=2,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=14,  # 16x16 grid -> padded to 28x28 windows, as SAM pads 64 to 70
                out_chans=PROMPT_DIM,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=PROMPT_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=256, num_heads=8),
                transformer_dim=PROMPT_DIM,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        )
        # SAM zero-initialises the relative-position tables; random ones make tests exercise them.
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if "rel_pos" in name:
                    param.normal_(0.0, 0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return sam.eval()


def save_tiny_sam_checkpoint(path_or_uri: str, seed: int = 0) -> str:
    """Write a tiny SAM state_dict (torch.save format) to a local path or s3:// URI; returns it."""
    buffer = io.BytesIO()
    torch.save(build_tiny_sam(seed).state_dict(), buffer)
    storage.write_bytes(path_or_uri, buffer.getvalue())
    return path_or_uri
