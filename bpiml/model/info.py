"""Parameters and FLOPs of the student and its ablations (`bpiml model-info`).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one image (2 FLOPs per
multiply-add; convolutions and matmuls only); MACs = FLOPs / 2, the unit papers usually report.
The paper's budget is 9.6M parameters and 2.7G at 224x224; both FLOPs and MACs are compared.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bpiml.config import HelpFormatter
from bpiml.model.config import StudentConfig
from bpiml.runtime.jobcli import config_from_args

if TYPE_CHECKING:
    import torch

PARAM_BUDGET = 9_600_000
COMPUTE_BUDGET = 2.7e9
VARIANTS = {
    "full": {"use_memory": True, "use_gating": True},
    "no-memory": {"use_memory": False, "use_gating": True},
    "no-gating": {"use_memory": True, "use_gating": False},
    "baseline": {"use_memory": False, "use_gating": False},
}


def count_flops(model: torch.nn.Module, img_size: int = 224) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on a 1x3x img_size x img_size input."""
    import torch  # noqa: PLC0415 - here, not at import: `bpiml model-info --help` stays fast
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, img_size, img_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def model_info(config: StudentConfig, img_size: int = 224) -> dict:
    """{"params": int, "flops": int, "macs": int} of the student built from `config` (random init)."""
    from bpiml.model.student import Student  # noqa: PLC0415 - imports torch

    model = Student(config.replace(backbone_weights=None))
    flops = count_flops(model, img_size)
    return {"params": sum(p.numel() for p in model.parameters()), "flops": flops, "macs": flops // 2}


def cli_model_info(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="bpiml model-info", description=__doc__.splitlines()[0])
    StudentConfig.add_arguments(parser)
    args = parser.parse_args(argv)
    base = config_from_args(parser, StudentConfig, args)  # a bad value: exit 2 naming the flag
    rows = []
    for name, switches in VARIANTS.items():
        info = model_info(base.replace(**switches), base.img_size)
        rows.append((name, info))
    print(f"student {base.backbone}, width {base.width}, {base.memory_slots} slots, {base.img_size}x{base.img_size}; "
          f"budget {PARAM_BUDGET / 1e6:.1f}M params, {COMPUTE_BUDGET / 1e9:.1f}G")
    print(f"{'variant':<10} {'params':>10} {'GFLOPs':>8} {'GMACs':>7}  {'params ok':>9} {'FLOPs ok':>8} {'MACs ok':>7}")
    for name, info in rows:
        ok = (info["params"] <= PARAM_BUDGET, info["flops"] <= COMPUTE_BUDGET, info["macs"] <= COMPUTE_BUDGET)
        print(f"{name:<10} {info['params'] / 1e6:>9.3f}M {info['flops'] / 1e9:>8.3f} {info['macs'] / 1e9:>7.3f}  "
              + " ".join(f"{('yes' if o else 'NO'):>{w}}" for o, w in zip(ok, (9, 8, 7))))
    return 0
