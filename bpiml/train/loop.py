"""What each Ray Train worker runs: build, restore (or start from an earlier model), then per epoch train,
validate, report.

Every worker trains on its shard of the train dataset (`ray.train.get_dataset_shard`) and
validates on its shard of the validation dataset; sums are all-reduced so every rank sees the same
epoch metrics. Rank 0 logs a progress line every `log_every` steps and one line per epoch, logs the
metrics to MLflow (each epoch once, also across restarts) and reports the checkpoint
(`bpiml.model.checkpoint`). Ray Train restarts a failed worker group from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import math
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import Checkpoint
from torch import Tensor, nn

from bpiml.data import rejects, storage
from bpiml.model import checkpoint as ckpt
from bpiml.model.student import StudentConfig, build_student
from bpiml.runtime import logs
from bpiml.runtime.resources import torch_device
from bpiml.runtime.tracking_queue import StepLogger
from bpiml.train import init as init_model
from bpiml.train.batches import to_input, to_target
from bpiml.train.config import TrainConfig
from bpiml.train.validation import ValSums, validate

logger = logging.getLogger(__name__)
MAX_REJECT_ROWS = 1000  # unreadable samples listed per worker in <run_dir>/rejects/
TRACKING_FLUSH_S = 10.0  # at the end, rank 0 waits this long for queued MLflow logging; the driver replays the rest


# --- loss, schedule ------------------------------------------------------------------------------
def mask_loss(logits: Tensor, target: Tensor, dice_weight: float = 0.0, weight: Tensor | None = None) -> Tensor:
    """BCE with logits + `dice_weight` x soft Dice (per image, smoothed by 1), both means over the batch.
    `weight` (B,): each image's loss is multiplied by it before the mean (--confidence-weight)."""
    per_image = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    if dice_weight > 0:
        prob = torch.sigmoid(logits).flatten(1)
        flat = target.flatten(1)
        dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
        per_image = per_image + dice_weight * dice
    return (per_image if weight is None else per_image * weight).mean()


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, kernels and memory prototypes; none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def all_reduce(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --- one worker ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Worker:
    cfg: TrainConfig
    student_cfg: StudentConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module  # wrapped for DDP
    core: nn.Module  # the student itself
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule: Callable[[int], float]
    tracking_uri: str
    run_id: str
    run_dir: str
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    steps: StepLogger | None = None  # rank 0: the epochs' MLflow logging, in the background
    mlflow_errors: int = 0
    rejected: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # unreadable samples, first epoch
    rejects_written: bool = False
    init_from: dict[str, Any] | None = None  # the model this run started from (bpiml.train.init), as recorded

    def autocast(self) -> AbstractContextManager:
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def _setup_logging(rank: int) -> None:
    root = logging.getLogger("bpiml")
    if rank == 0 and not root.handlers:
        level = logging.getLevelName(os.environ.get("BPIML_LOG_LEVEL", "INFO"))  # the driver's --quiet/--verbose
        logs.setup_logging(level if isinstance(level, int) else logging.INFO, root)  # not propagated: no double lines


def build(loop_config: dict[str, Any]) -> Worker:
    cfg = TrainConfig.from_dict(loop_config["train_config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _setup_logging(rank)
    torch.manual_seed(cfg.seed)
    core = build_student(cfg.model)
    if cfg.channels_last:
        core = core.to(memory_format=torch.channels_last)
    # A GPU Ray assigned to a process where CUDA does not work is an error naming the fix, not a CPU run.
    torch_device(cfg.gpus_per_worker or 0)
    model = ray.train.torch.prepare_model(core)
    core = model.module if hasattr(model, "module") else model
    steps = max(1, math.ceil(loop_config["n_train"] / (cfg.batch_size * world)))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = warmup_cosine(cfg.epochs * steps, int(round(cfg.warmup_epochs * steps)), cfg.min_lr_ratio)
    return Worker(cfg=cfg, student_cfg=cfg.model, rank=rank, world=world, device=ray.train.torch.get_device(),
                  model=model, core=core, optimizer=optimizer,
                  scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule=schedule,
                  tracking_uri=loop_config["tracking_uri"], run_id=loop_config["mlflow_run_id"],
                  run_dir=loop_config["run_dir"], init_from=loop_config.get("init_from"))


def restore(worker: Worker, checkpoint: Checkpoint | None) -> None:
    """Continue from the latest checkpoint (a resumed run, or a restart after a failure). Rank 0 starts the
    background MLflow logger and hands it the checkpoint's history: epochs an outage kept out of MLflow
    are logged now, the ones MLflow holds are not logged again."""
    if worker.rank == 0:
        worker.steps = StepLogger(worker.tracking_uri, worker.run_id)
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        state, history = ckpt.load_state(folder), ckpt.read_history(folder)
    worker.core.load_state_dict(state["model_state"])
    worker.optimizer.load_state_dict(state["optimizer_state"])
    worker.scheduler.load_state_dict(state["scheduler_state"])
    # The step count carries over; the schedule is this run's (more epochs stretch the cosine).
    worker.scheduler.base_lrs = [worker.cfg.lr] * len(worker.optimizer.param_groups)
    for group in worker.optimizer.param_groups:
        group["lr"] = worker.cfg.lr * worker.schedule(worker.scheduler.last_epoch)
    worker.start_epoch = int(state["epoch"]) + 1
    worker.history = history[:worker.start_epoch]
    if worker.steps is not None:
        worker.steps.replay(worker.history)
    if worker.rank == 0:
        logger.info("resuming from %s: epoch %d done, continuing to %d", checkpoint.path, worker.start_epoch,
                    worker.cfg.epochs)


def _skip_unreadable(worker: Worker, batch: dict[str, Any], epoch: int) -> np.ndarray:
    ok = np.asarray(batch["ok"], bool)
    if not worker.rejects_written and len(worker.rejected) < MAX_REJECT_ROWS:
        for i in np.flatnonzero(~ok):
            worker.rejected.append(rejects.Reject(str(batch["id"][i]), str(batch["source_image"][i]), "train",
                                                  str(batch["reason"][i])).to_dict())
    return ok


def train_one_epoch(worker: Worker, epoch: int) -> dict[str, float]:
    """One pass over this worker's shard; returns loss_sum, seen, unreadable, images_per_s (this worker)."""
    cfg, model = worker.cfg, worker.model
    model.train()
    shard = ray.train.get_dataset_shard("train")
    loss_sum, seen, unreadable, step, started = 0.0, 0, 0, 0, time.perf_counter()
    for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                    local_shuffle_buffer_size=cfg.shuffle_buffer or None):
        ok = _skip_unreadable(worker, batch, epoch)
        unreadable += int((~ok).sum())
        if not ok.any():
            continue
        x = to_input(batch["image"][ok], worker.device, cfg.channels_last)
        y = to_target(batch["target"][ok], worker.device)
        with worker.autocast():
            logits = model(x)
        weight = torch.as_tensor(batch["weight"][ok], device=worker.device) if cfg.confidence_weight else None
        loss = mask_loss(logits.float(), y, cfg.dice_weight, weight)
        worker.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        worker.optimizer.step()
        worker.scheduler.step()
        loss_sum, seen, step = loss_sum + float(loss.detach()) * len(x), seen + len(x), step + 1
        if worker.rank == 0 and step % cfg.log_every == 0:
            rate = seen * worker.world / max(time.perf_counter() - started, 1e-9)
            logger.info("epoch %d step %d: loss %.4f lr %.2e %.1f img/s", epoch + 1, step, float(loss.detach()),
                        worker.optimizer.param_groups[0]["lr"], rate)
    return {"loss_sum": loss_sum, "seen": float(seen), "unreadable": float(unreadable),
            "seconds": time.perf_counter() - started}


def check_unreadable(worker: Worker, unreadable: float, total: float) -> None:
    """Stop the run (clearly) when more than `max_reject_rate` of the samples cannot be read."""
    share = unreadable / max(total, 1.0)
    if share > worker.cfg.max_reject_rate:
        raise RuntimeError(
            f"{int(unreadable)} of {int(total)} training samples ({share:.1%}) could not be read, more than "
            f"--max-reject-rate {worker.cfg.max_reject_rate:.1%}; see {storage.join(worker.run_dir, 'rejects')} "
            "(missing or corrupt files, or masks of another size than their image)")


def _write_rejects(worker: Worker) -> None:
    if worker.rejected and not worker.rejects_written:
        uri = storage.join(worker.run_dir, "rejects", f"worker-{worker.rank}.jsonl")
        storage.write_bytes(uri, rejects.to_jsonl(worker.rejected).encode())
    worker.rejects_written = True  # the first epoch lists them; later epochs only count


def log_epoch(worker: Worker, epoch: int, row: dict[str, float], strips: list[tuple[str, np.ndarray]]) -> None:
    """Rank 0: the epoch line and the MLflow metrics (each epoch once, also across restarts)."""
    logger.info("epoch %d/%d loss %.4f lr %.2e %.1f img/s | val F1 %.3f IoU %.3f AUC %.3f | slots %.0f/%d entropy %.2f"
                " | unreadable %d", epoch + 1, worker.cfg.epochs, row["loss"], row["lr"], row["images_per_s"],
                row["val_f1"], row["val_iou"], row["val_auc"], row["slots_used"], worker.student_cfg.memory_slots,
                row["attention_entropy_normalized"], int(row["unreadable"]))
    if worker.steps is not None:  # queued: MLflow down or slow never holds training up
        worker.steps.log(epoch, row, strips, f"overlays/epoch_{epoch:03d}")


def report(worker: Worker, epoch: int, row: dict[str, float]) -> None:
    """Every rank reports the metrics; rank 0 adds the checkpoint."""
    worker.history.append(row)
    if worker.rank != 0:
        ray.train.report(row)
        return
    state = {"model_config": worker.student_cfg.to_dict(), "model_state": worker.core.state_dict(),
             "optimizer_state": worker.optimizer.state_dict(), "scheduler_state": worker.scheduler.state_dict(),
             "epoch": epoch, "train_config": worker.cfg.to_dict(), "mlflow_run_id": worker.run_id,
             **({"init_from": worker.init_from} if worker.init_from else {})}
    with tempfile.TemporaryDirectory() as folder:
        ckpt.save(folder, state, worker.history, worker.cfg.to_json())
        ray.train.report(row, checkpoint=Checkpoint.from_directory(folder))


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point; `loop_config` is built by `bpiml.train.job.run_training`."""
    worker = build(loop_config)
    checkpoint = ray.train.get_checkpoint()
    restore(worker, checkpoint)
    if checkpoint is None and loop_config.get("init"):  # a fresh run started from an earlier model
        worker.mlflow_errors += init_model.start_from(worker.core, loop_config["init"], worker.rank,
                                                      worker.tracking_uri, worker.run_id)
    for epoch in range(worker.start_epoch, worker.cfg.epochs):
        lr = worker.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(worker, epoch)
        overlays = worker.cfg.log_images if (worker.rank == 0 and worker.cfg.logs_overlays(epoch)) else 0
        sums, strips = validate(worker.core, ray.train.get_dataset_shard("val").iter_batches(
            batch_size=worker.cfg.batch_size, batch_format="numpy"), worker.device, worker.autocast,
            worker.cfg.channels_last, overlays=overlays)
        loss_sum, seen, unreadable, seconds = all_reduce(
            [stats["loss_sum"], stats["seen"], stats["unreadable"], stats["seconds"]], worker.device)
        val = ValSums.from_list(all_reduce(sums.to_list(), worker.device))
        _write_rejects(worker)
        check_unreadable(worker, unreadable + val.unreadable, seen + unreadable + val.seen)
        row = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "lr": lr, "start_epoch": worker.start_epoch,
               "images_per_s": seen / max(seconds / worker.world, 1e-9), "unreadable": unreadable + val.unreadable,
               "epoch_time_s": seconds / worker.world, "mlflow_errors": worker.mlflow_errors, **val.means()}
        row["score"] = row["val_f1"] if math.isfinite(row["val_f1"]) else -row["loss"]
        if worker.rank == 0:
            log_epoch(worker, epoch, row, strips)
        report(worker, epoch, row)
    late, pending = worker.steps.close(TRACKING_FLUSH_S) if worker.steps is not None else ([], [])
    errors = worker.mlflow_errors + (worker.steps.errors if worker.steps is not None else 0)
    return {"start_epoch": worker.start_epoch, "epochs": worker.cfg.epochs, "mlflow_errors": errors,
            "mlflow_late": late, "mlflow_pending": pending}
