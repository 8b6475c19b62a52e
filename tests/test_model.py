"""Student model: module shapes, ablations, gradients, budget, config, pickling, weights loading."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from bpiml.model import StudentConfig, build_student, memory_usage_stats
from bpiml.model.backbone import Backbone
from bpiml.model.gating import GatedIntegration
from bpiml.model.guidance import DualGuidance
from bpiml.model.info import (
    COMPUTE_BUDGET,
    PARAM_BUDGET,
    VARIANTS,
    cli_model_info,
    model_info,
)
from bpiml.model.memory_bank import MemoryBank
from bpiml.model.mgfm import build_mgfm
from bpiml.model.projection import MultiScalePreprocess
from bpiml.model.refine import RefineHead

B, D = 2, 16
CHANNELS, STRIDES = [64, 128, 160, 320], [4, 8, 16, 32]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_features(size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(B, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES)]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("tiny_vit_5m_224").eval()


def test_backbone_feature_info(backbone):
    assert backbone.channels == CHANNELS and backbone.strides == STRIDES
    feats = backbone(torch.rand(B, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(B, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, STRIDES)]


def test_module_shapes():
    feats = fake_features(64)
    projected = MultiScalePreprocess(CHANNELS, STRIDES, D, out_stride=8)(feats)
    assert [tuple(p.shape) for p in projected] == [(B, D, 8, 8)] * 4
    for enabled in (True, False):
        a_base, g_avg = GatedIntegration(D, 4, enabled=enabled)(projected)
        assert a_base.shape == (B, D, 8, 8) and g_avg.shape == (B, 1, 8, 8)
    assert torch.equal(g_avg, torch.ones_like(g_avg))
    assert torch.allclose(a_base, sum(projected))
    a_mem, attention = MemoryBank(D, 5)(a_base)
    assert a_mem.shape == a_base.shape and attention.shape == (B, 64, 5)
    assert torch.allclose(attention.sum(-1), torch.ones(B, 64))
    fused = DualGuidance(0.25)(a_base, g_avg, a_mem)
    assert torch.allclose(fused, 0.25 * a_base * g_avg + 0.75 * a_mem)
    assert torch.equal(DualGuidance(0.25)(a_base, g_avg, None), a_base * g_avg)
    logits = RefineHead(D, 8, skip_channels=64)(fused, (64, 64), feats[0])
    assert logits.shape == (B, 1, 64, 64)
    assert RefineHead(D, 8)(fused, (40, 48)).shape == (B, 1, 40, 48)
    logits, aux = build_mgfm(CHANNELS, STRIDES, width=D, memory_slots=5)(feats, (64, 64))
    assert logits.shape == (B, 1, 64, 64)
    assert aux["gate_mean"].shape == (B, 1, 8, 8) and aux["memory_attention"].shape == (B, 64, 5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ablations_end_to_end(variant):
    torch.manual_seed(0)
    model = build_student(StudentConfig(width=D, memory_slots=8, **VARIANTS[variant]))
    logits, aux = model.forward_with_aux(torch.rand(B, 3, 64, 96))
    assert logits.shape == (B, 1, 64, 96) and torch.isfinite(logits).all()
    assert aux["gate_mean"].shape == (B, 1, 8, 12)
    names = [n for n, _ in model.named_parameters()]
    if VARIANTS[variant]["use_memory"]:
        assert aux["memory_attention"].shape == (B, 8 * 12, 8)
    else:
        assert "memory_attention" not in aux
        assert not any("memory" in n or "prototypes" in n for n in names)
    if not VARIANTS[variant]["use_gating"]:
        assert torch.equal(aux["gate_mean"], torch.ones_like(aux["gate_mean"]))
        assert not any(".gating." in n for n in names)


def test_gradients_reach_prototypes_and_alpha():
    torch.manual_seed(0)
    model = build_student(StudentConfig(width=D, memory_slots=8, learn_alpha=True, alpha=0.3))
    assert model.mgfm.fusion.alpha().item() == pytest.approx(0.3)
    logits = model(torch.rand(B, 3, 64, 64))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand_like(logits)).backward()
    assert model.mgfm.memory.prototypes.grad.abs().sum() > 0
    assert model.mgfm.fusion.alpha_logit.grad.abs() > 0
    assert all(p.grad is not None for p in model.mgfm.gating.parameters())


def test_budget_and_cli(capsys):
    info = model_info(StudentConfig())
    print(f"student at 224: {info['params'] / 1e6:.3f}M params, {info['flops'] / 1e9:.3f} GFLOPs, {info['macs'] / 1e9:.3f} GMACs")
    assert info["params"] <= PARAM_BUDGET
    assert info["macs"] <= COMPUTE_BUDGET
    assert info["flops"] <= COMPUTE_BUDGET  # holds as FLOPs too (2 per multiply-add)
    assert info["flops"] > 2 * 1e9  # sanity: the backbone alone is ~2.5 GFLOPs
    assert cli_model_info(["--width", "8", "--memory-slots", "4", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VARIANTS) and "GMACs" in out


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"widht": 3}, "widht"),
        ({"width": 0}, "width"),
        ({"memory_slots": -1}, "memory_slots"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.0, "learn_alpha": True}, "alpha"),
        ({"backbone": "not_a_model"}, "backbone"),
        ({"img_size": 100}, "img_size"),
    ],
)
def test_config_rejections(values, key):
    with pytest.raises(ValueError, match=key):
        StudentConfig.from_dict(values)


def test_config_round_trip():
    config = StudentConfig(width=32, use_memory=False)
    assert StudentConfig.from_dict(config.to_dict()) == config
    assert config.variant == "no-memory"


def test_memory_usage_stats():
    k = 8
    uniform = torch.full((2, 10, k), 1.0 / k)
    stats = memory_usage_stats(uniform)
    assert stats["attention_entropy"] == pytest.approx(math.log(k), abs=1e-5)
    assert stats["attention_entropy_normalized"] == pytest.approx(1.0, abs=1e-5)
    # 200 queries: slot 0 wins 150, slot 3 wins 48, slot 5 wins 2 (exactly 1%: counted); none wins below 1%
    winners = torch.tensor([0] * 150 + [3] * 48 + [5] * 2)
    one_hot = torch.nn.functional.one_hot(winners, k).float().view(2, 100, k)
    stats = memory_usage_stats(one_hot)
    assert stats["attention_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["slots_used"] == 3
    winners = torch.tensor([0] * 299 + [1])  # slot 1 wins 1/300 < 1%
    assert memory_usage_stats(torch.nn.functional.one_hot(winners, k).float())["slots_used"] == 1


def test_pickle_round_trip_same_outputs():
    torch.manual_seed(0)
    model = build_student(StudentConfig(width=D, memory_slots=8, learn_alpha=True)).eval()
    x = torch.rand(B, 3, 64, 64)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.config == model.config
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_backbone_weights_from_file(tmp_path, backbone):
    x = torch.rand(B, 3, 64, 64)
    path = tmp_path / "backbone.pt"
    torch.save(backbone.model.state_dict(), path)
    torch.manual_seed(1)
    fresh = Backbone("tiny_vit_5m_224", weights=str(path)).eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fresh(x), backbone(x)))
    # a full timm classifier checkpoint (with head keys) wrapped as {"state_dict": ...} loads too
    import timm

    full = timm.create_model("tiny_vit_5m_224", pretrained=False).state_dict()
    full.update(backbone.model.state_dict())
    torch.save({"state_dict": full}, tmp_path / "full.pth")
    student = build_student(StudentConfig(width=D, memory_slots=4, backbone_weights=str(tmp_path / "full.pth"))).eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(student.backbone(x), backbone(x)))
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        Backbone("tiny_vit_5m_224", weights=str(tmp_path / "bad.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Backbone("tiny_vit_5m_224", weights=str(tmp_path / "missing.pt"))


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = build_student(StudentConfig(width=D, memory_slots=8)).eval()
    x = torch.rand(B, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1
