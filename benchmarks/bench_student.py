"""Student throughput next to the bare backbone (backbone + trivial head), same machine, same run.

    python benchmarks/bench_student.py                       # CPU (1 thread), batch 8, a few steps (< 1 min)
    python benchmarks/bench_student.py --threads 0           # CPU with torch's default thread count
    python benchmarks/bench_student.py --device cuda --batch-size 64 --steps 50 --bf16 --channels-last

Training images/s: forward + BCE loss + backward + AdamW step. Inference images/s: eval forward
under no_grad. Ratios are student / bare backbone (1.0 = the MGFM costs nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpiml.model import StudentConfig, build_student
from bpiml.model.backbone import Backbone


class BareBackbone(nn.Module):
    """Backbone + a 1x1 conv on the coarsest map, upsampled: the cheapest possible mask head."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.backbone = Backbone(name)
        self.head = nn.Conv2d(self.backbone.channels[-1], 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.head(self.backbone(x)[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: nn.Module, args: argparse.Namespace, device: torch.device, train: bool) -> float:
    """Images per second over `args.steps` timed steps after `args.warmup` untimed ones."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train(train)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, device=device).contiguous(memory_format=fmt)
    target = (torch.rand(args.batch_size, 1, args.img_size, args.img_size, device=device) > 0.5).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def step() -> None:
        if optimizer is not None:
            with autocast:
                loss = F.binary_cross_entropy_with_logits(model(x).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                model(x)

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each measurement")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--backbone", default="tiny_vit_5m_224")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads; 1 keeps numbers stable on shared machines, 0 = torch's default")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--variants", nargs="*", default=["full"], help="student ablations: full no-memory no-gating baseline")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    switches = {"full": (True, True), "no-memory": (False, True), "no-gating": (True, False), "baseline": (False, False)}
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"bare backbone": BareBackbone(args.backbone)}
    for variant in args.variants:
        memory, gating = switches[variant]
        config = StudentConfig(backbone=args.backbone, use_memory=memory, use_gating=gating, img_size=args.img_size)
        models[f"student {variant}"] = build_student(config)
    results = {name: (measure(m, args, device, True), measure(m, args, device, False)) for name, m in models.items()}
    ref_train, ref_infer = results["bare backbone"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; batch {args.batch_size}; {args.img_size}x{args.img_size}; bf16 {args.bf16}; "
          f"channels_last {args.channels_last}; {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':<20} {'train img/s':>12} {'ratio':>6} {'infer img/s':>12} {'ratio':>6}")
    for model_name, (train, infer) in results.items():
        print(f"{model_name:<20} {train:>12.1f} {train / ref_train:>6.2f} {infer:>12.1f} {infer / ref_infer:>6.2f}")


if __name__ == "__main__":
    main(parse_args())
