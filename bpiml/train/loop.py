"""What each Ray Train worker runs: DDP training of the student, validation, checkpoints.

Every worker trains on its DistributedSampler share of the train samples and validates on its
share of the validation samples; sums are all-reduced so every rank sees the same epoch
metrics. Rank 0 logs one line per epoch, logs metrics to MLflow and reports the checkpoint:
{"model_config", "model_state", "optimizer_state", "scheduler_state", "epoch", "train_config",
"mlflow_run_id"} in `checkpoint.pt`, plus `history.json` (one row per epoch since epoch 0).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpiml.evaluation import metrics as iml_metrics
from bpiml.runtime import tracking
from bpiml.train.job import CHECKPOINT_FILE, HISTORY_FILE, TrainConfig
from bpiml.train.data import Augment, MaskDataset, sample_from_dict, to_tensors

logger = logging.getLogger(__name__)


# --- loss, schedule, metrics --------------------------------------------------------------
def mask_loss(logits: Tensor, target: Tensor, dice_weight: float = 0.0) -> Tensor:
    """BCE with logits + `dice_weight` x soft Dice (per image, smoothed by 1), both means over the batch."""
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight > 0:
        prob = torch.sigmoid(logits).flatten(1)
        flat = target.flatten(1)
        dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
        loss = loss + dice_weight * dice.mean()
    return loss


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def image_metrics(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Per-image pixel F1 / IoU at 0.5 and AUC (nan where undefined: authentic GT, one class)."""
    row = iml_metrics.image_row(prob, gt)
    return {"f1": float(row["f1"]), "iou": float(row["iou"]), "auc": float(row["auc"])}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, kernels and memory prototypes; none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _setup_logging(rank: int) -> None:
    root = logging.getLogger("bpiml")
    if rank == 0 and not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # Ray's own root handler would print every line a second time


# --- validation ---------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, dataset: MaskDataset, device: torch.device, batch_size: int,
             autocast: Any, channels_last: bool, overlays: int = 0) -> tuple[list[float], list[tuple[str, np.ndarray]]]:
    """Sums over this worker's validation images: [f1_sum, n_f1, iou_sum, n_iou, auc_sum, n_auc,
    slots_used x images, entropy x images, normalized entropy x images, images with attention],
    plus up to `overlays` (name, image | target | GT | prediction) strips."""
    model.eval()
    sums = [0.0] * 10
    strips: list[tuple[str, np.ndarray]] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset.decoded(i) for i in range(start, min(len(dataset), start + batch_size))]
        x = torch.stack([to_tensors(image, target)[0] for image, target, _ in items]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits, aux = model.forward_with_aux(x)
        prob = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        for j, (image, target, gt) in enumerate(items):
            if gt is not None:
                m = image_metrics(prob[j], gt)
                for k, key in enumerate(("f1", "iou", "auc")):
                    if not math.isnan(m[key]):
                        sums[2 * k] += m[key]
                        sums[2 * k + 1] += 1
            if len(strips) < overlays:
                sample = dataset.samples[start + j]
                strips.append((sample.id, tracking.overlay_strip(image, target, gt if gt is not None else target, prob[j])))
        attention = aux.get("memory_attention")
        if attention is not None:
            from bpiml.model.memory_bank import memory_usage_stats

            stats = memory_usage_stats(attention)
            n = len(items)
            sums[6] += stats["slots_used"] * n
            sums[7] += stats["attention_entropy"] * n
            sums[8] += stats["attention_entropy_normalized"] * n
            sums[9] += n
    return sums, strips


def _means(sums: list[float]) -> dict[str, float]:
    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    return {
        "val_f1": ratio(sums[0], sums[1]),
        "val_iou": ratio(sums[2], sums[3]),
        "val_auc": ratio(sums[4], sums[5]),
        "slots_used": ratio(sums[6], sums[9]),
        "attention_entropy": ratio(sums[7], sums[9]),
        "attention_entropy_normalized": ratio(sums[8], sums[9]),
    }


# --- the worker function -------------------------------------------------------------------
def _load_state(checkpoint: Any) -> tuple[dict[str, Any], list[dict[str, float]]]:
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        history_path = Path(folder) / HISTORY_FILE
        history = json.loads(history_path.read_text()) if history_path.exists() else []
    return state, history


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, int]:
    """Ray Train entry point; `loop_config` is built by `bpiml.train.run_training`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from bpiml.model.student import StudentConfig, build_student

    cfg = TrainConfig.from_dict(loop_config["train_config"])
    student_cfg = StudentConfig.from_dict(loop_config["model_config"])
    tracking_uri, run_id = loop_config["tracking_uri"], loop_config["mlflow_run_id"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _setup_logging(rank)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    model = build_student(student_cfg)
    state: dict[str, Any] | None = None
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state, history = _load_state(checkpoint)
        model.load_state_dict(state["model_state"])
        start_epoch = int(state["epoch"]) + 1
        history = history[:start_epoch]
        if rank == 0:
            logger.info("resuming from %s: epoch %d done, continuing to %d", checkpoint.path, start_epoch, cfg.epochs)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model

    size = student_cfg.img_size
    augment = Augment(cfg.aug_scale_min, cfg.aug_hflip, cfg.aug_color, cfg.aug_jpeg_prob)
    train_set = MaskDataset([sample_from_dict(s) for s in loop_config["train"]], size, augment,
                            cfg.cache_images, cfg.seed)
    val_samples = [sample_from_dict(s) for s in loop_config["val"]]
    if not val_samples:  # no GT: memory statistics and overlays still come from a few train images
        val_samples = [sample_from_dict({**s, "gt": None}) for s in loop_config["train"][: max(world, 4)]]
    val_set = MaskDataset(val_samples[rank::world], size, None, cfg.cache_images, cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=cfg.loader_workers, drop_last=False)
    loader = ray.train.torch.prepare_data_loader(loader)
    steps = max(1, len(loader))

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = warmup_cosine(cfg.epochs * steps, int(round(cfg.warmup_epochs * steps)), cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if state is not None:
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        # The step count carries over; the schedule is this run's (more epochs stretch the cosine).
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(scheduler.last_epoch)
    use_amp = cfg.amp and device.type == "cuda"

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()

    mlflow_ok = True
    for epoch in range(start_epoch, cfg.epochs):
        train_set.set_epoch(epoch)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, seen, started = 0.0, 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(x)
            loss = mask_loss(logits.float(), y, cfg.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
        elapsed = time.perf_counter() - started
        total_loss, total_seen = _all_reduce([loss_sum, float(seen)], device)
        last = epoch == cfg.epochs - 1
        sums, strips = evaluate(core, val_set, device, cfg.batch_size, autocast, cfg.channels_last,
                                overlays=cfg.log_images if (rank == 0 and last) else 0)
        val = _means(_all_reduce(sums, device))
        loss_mean = total_loss / max(total_seen, 1)
        row = {"epoch": epoch, "loss": loss_mean, "lr": lr, "images_per_s": total_seen / max(elapsed, 1e-9),
               "epoch_time_s": time.perf_counter() - started, **val, "start_epoch": start_epoch}
        row["score"] = row["val_f1"] if math.isfinite(row["val_f1"]) else -loss_mean
        history.append(row)
        if rank != 0:
            ray.train.report(row)
            continue
        logger.info(
            "epoch %d/%d loss %.4f lr %.2e %.1f img/s | val F1 %.3f IoU %.3f AUC %.3f | slots %.0f/%d entropy %.2f",
            epoch + 1, cfg.epochs, loss_mean, lr, row["images_per_s"], row["val_f1"], row["val_iou"],
            row["val_auc"], row["slots_used"], student_cfg.memory_slots, row["attention_entropy_normalized"])
        if mlflow_ok:
            try:
                tracking.log_metrics(tracking_uri, run_id, {k: v for k, v in row.items() if k != "start_epoch"},
                                     step=epoch)
                if strips:
                    tracking.log_overlays(tracking_uri, run_id, strips, f"overlays/epoch_{epoch:03d}")
            except Exception as err:  # tracking trouble must not stop training
                mlflow_ok = False
                logger.warning("MLflow logging failed (%s: %s); training continues without it", type(err).__name__, err)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({
                "model_config": student_cfg.to_dict(),
                "model_state": core.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "epoch": epoch,
                "train_config": cfg.to_dict(),
                "mlflow_run_id": run_id,
            }, Path(folder) / CHECKPOINT_FILE)
            Path(folder, HISTORY_FILE).write_text(json.dumps(history, indent=1))
            Path(folder, "train_config.json").write_text(cfg.to_json())
            ray.train.report(row, checkpoint=Checkpoint.from_directory(folder))
    return {"start_epoch": start_epoch, "epochs": cfg.epochs}
