"""The fast SAM path (fused attention) against the stock path, on CPU with a tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

from bpiml.pseudolabel.teachers import build_teacher
from bpiml.pseudolabel.teachers.sam_fast import (
    FastAttention,
    decomposed_rel_pos_bias,
    enable_fast_attention,
    preprocess_on_device,
)
from bpiml.pseudolabel.teachers.tiny_sam import build_tiny_sam, save_tiny_sam_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_sam_checkpoint(str(tmp_path_factory.mktemp("sam") / "tiny_sam.pt"), seed=3)


def test_rel_pos_bias_equals_segment_anything_term() -> None:
    torch.manual_seed(0)
    batch, heads, size, dim = 2, 3, (5, 7), 8
    q = torch.randn(batch, heads, size[0] * size[1], dim)
    rel_h, rel_w = torch.randn(2 * size[0] - 1, dim), torch.randn(2 * size[1] - 1, dim)
    zeros = torch.zeros(batch * heads, size[0] * size[1], size[0] * size[1])
    expected = add_decomposed_rel_pos(zeros, q.reshape(batch * heads, -1, dim), rel_h, rel_w, size, size)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, size, size)
    torch.testing.assert_close(bias.reshape(batch * heads, *bias.shape[2:]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_rel_pos", [True, False])
def test_fast_attention_matches_stock_attention(use_rel_pos: bool) -> None:
    torch.manual_seed(0)
    stock = Attention(32, num_heads=4, use_rel_pos=use_rel_pos, input_size=(6, 6)).eval()
    if use_rel_pos:
        with torch.no_grad():
            stock.rel_pos_h.normal_()
            stock.rel_pos_w.normal_()
    fast = Attention(32, num_heads=4, use_rel_pos=use_rel_pos, input_size=(6, 6)).eval()
    fast.load_state_dict(stock.state_dict())
    fast.__class__ = FastAttention
    x = torch.randn(3, 6, 6, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), stock(x), rtol=1e-4, atol=1e-5)


def test_enable_fast_attention_keeps_the_weights() -> None:
    sam = build_tiny_sam(seed=1)
    before = {name: p for name, p in sam.state_dict().items()}
    assert enable_fast_attention(sam.image_encoder) == len(sam.image_encoder.blocks) == 2
    after = sam.state_dict()
    assert list(after) == list(before)
    assert all(after[name] is before[name] or after[name].data_ptr() == before[name].data_ptr() for name in before)
    assert all(type(block.attn) is FastAttention for block in sam.image_encoder.blocks)
    assert enable_fast_attention(sam.image_encoder) == 0  # idempotent


def test_fast_path_matches_stock_path(tiny_checkpoint: str) -> None:
    stock = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=False, batch_size=2)
    fast = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=True, batch_size=2)
    assert stock.version.endswith("-stock") and fast.version.endswith("-fast")
    assert stock.version.rsplit("-", 1)[0] == fast.version.rsplit("-", 1)[0]  # same weights
    assert not fast.autocast and not fast.gpu_preprocess  # CPU: fp32, stock preprocessing

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(180, 240), (256, 128), (96, 96)]]
    boxes = [np.array([[10, 20, 120, 150], [130, 40, 230, 170]], np.float32),
             np.array([[4, 30, 120, 250]], np.float32), np.array([[20, 10, 80, 90]], np.float32)]
    with torch.inference_mode():
        batch = torch.stack([stock.preprocess(im)[0] for im in images])
        torch.testing.assert_close(fast.encode(batch), stock.encode(batch), rtol=1e-4, atol=1e-4)
    for a, b in zip(fast.predict(images, boxes), stock.predict(images, boxes)):
        assert a.shape == b.shape and b.any()
        assert (a == b).mean() >= 0.995


def test_fast_defaults_follow_the_device(tiny_checkpoint: str) -> None:
    cpu = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny")
    assert cpu.fast is False and type(cpu.sam.image_encoder.blocks[0].attn) is Attention
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", device="cuda")


def test_device_preprocessing_is_close_to_stock(tiny_checkpoint: str) -> None:
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny")
    rng = np.random.default_rng(1)
    image = (np.linspace(0, 255, 300)[None, :, None] + rng.normal(0, 5, (200, 300, 3))).clip(0, 255).astype(np.uint8)
    stock, stock_size = teacher.preprocess(image)
    mine, size = preprocess_on_device(image, teacher.img_size, teacher.sam.pixel_mean, teacher.sam.pixel_std)
    assert size == stock_size == (171, 256) and mine.shape == stock.shape == (3, 256, 256)
    assert (mine - stock).abs().mean() < 0.05  # normalised units; PIL rounds to uint8, this does not
    assert (mine[:, 171:] == 0).all()  # zero padding below the image, as SAM pads


def test_device_preprocessing_in_the_teacher(tiny_checkpoint: str) -> None:
    """The GPU-side preprocessing path, run on CPU: masks stay close to the stock path's."""
    stock = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=False)
    fast = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=True, gpu_preprocess=True)
    rng = np.random.default_rng(2)
    image = (np.linspace(0, 255, 320)[None, :, None] + rng.normal(0, 8, (240, 320, 3))).clip(0, 255).astype(np.uint8)
    boxes = np.array([[30, 40, 200, 220]], np.float32)
    (a,), (b,) = fast.predict([image], [boxes]), stock.predict([image], [boxes])
    assert a.shape == b.shape == (240, 320) and (a == b).mean() > 0.98


def test_compiled_encoder_sees_one_batch_shape(tiny_checkpoint: str) -> None:
    """With compile on, a short last batch is padded to batch_size and the padding is dropped."""
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=True, batch_size=4)
    seen: list[int] = []
    encoder = teacher.encoder
    teacher.compiled = True
    teacher.encoder = lambda batch: seen.append(batch.shape[0]) or encoder(batch)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64 + 8 * i, 80, 3), dtype=np.uint8) for i in range(5)]
    boxes = [np.array([[4, 4, 60, 50]], np.float32)] * 5
    masks = teacher.predict(images, boxes)
    assert seen == [4, 4] and [m.shape for m in masks] == [im.shape[:2] for im in images]
