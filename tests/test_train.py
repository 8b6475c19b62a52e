"""Training: config checks, data/augmentation, and a real Ray Train run with resume + MLflow (two workers: test_e2e, test_kill)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bpiml.data import imageio
from bpiml.data.boxes import fill_boxes
from bpiml.evaluation.inference import load_model
from bpiml.model.student import StudentConfig
from bpiml.pseudolabel.store import source_reference, write_index
from bpiml.train.augment import Augment
from bpiml.train.config import TrainConfig
from bpiml.train.data import augment_samples, decode_samples, sample_rows
from bpiml.train.datasets import training_data
from bpiml.train.job import check_training_inputs
from bpiml.train.loop import mask_loss, warmup_cosine

TINY = StudentConfig(width=32, memory_slots=16, img_size=64)


def make_pseudo_store(root: Path, n_train: int = 16, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Input store + pseudo-labeled store: textured background with one bright square per image.

    The pseudo mask is the square (a perfect teacher), GT is the same square, boxes its bounds.
    Returns the pseudo-labeled store root.
    """
    rng = np.random.default_rng(seed)
    source = root / "input"
    pseudo = root / "pseudo-store"
    for folder in (source / "images", source / "masks", pseudo / "pseudo"):
        folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_train + n_val):
        rid = f"img{i:03d}"
        image = (rng.uniform(0, 90, (size, size, 3))).astype(np.uint8)
        side = int(rng.integers(size // 4, size // 2))
        y0, x0 = (int(v) for v in rng.integers(0, size - side, 2))
        image[y0:y0 + side, x0:x0 + side] = rng.integers(180, 255, 3)
        mask = np.zeros((size, size), dtype=bool)
        mask[y0:y0 + side, x0:x0 + side] = True
        (source / "images" / f"{rid}.png").write_bytes(imageio.encode_image(image, "png"))
        (source / "masks" / f"{rid}.png").write_bytes(imageio.encode_mask_png(mask))
        (pseudo / "pseudo" / f"{rid}.png").write_bytes(imageio.encode_mask_png(mask))
        lines.append({
            "id": rid, "image": f"images/{rid}.png", "boxes": [[x0, y0, x0 + side, y0 + side]],
            "mask": f"masks/{rid}.png", "split": "train" if i < n_train else "val",
            "pseudo_mask": f"pseudo/{rid}.png", "teacher": "fake",
            "teacher_version": "0", "mask_area": float(mask.mean()), "iou_gt": 1.0,
        })
    (pseudo / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_index(str(pseudo), {"source": source_reference(str(source), str(pseudo)), "teacher": {"name": "fake"},
                              "complete": True})
    return pseudo


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pseudo_store(tmp_path_factory.mktemp("train-store"))


# --- config ----------------------------------------------------------------------------------
def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown TrainConfig key.*epoks"):
        TrainConfig.from_dict({"epoks": 3})
    with pytest.raises(ValueError, match="supervision"):
        TrainConfig.from_dict({"supervision": "teacher"})
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({"epochs": 0})
    with pytest.raises(ValueError, match="cpus_per_worker"):
        TrainConfig.from_dict({"cpus_per_worker": 0})
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig.from_dict({"epochs": 2, "warmup_epochs": 5})
    with pytest.raises(ValueError, match="train_split and val_split"):
        TrainConfig.from_dict({"train_split": "val"})
    with pytest.raises(ValueError, match="img_size"):
        TrainConfig.from_dict({"model": {"img_size": 50}})
    with pytest.raises(ValueError, match="unknown StudentConfig key.*widht"):
        TrainConfig.from_dict({"model": {"widht": 8}})
    with pytest.raises(ValueError, match="register must be NAME or NAME@ALIAS"):
        TrainConfig.from_dict({"register": "a@b@c"})
    with pytest.raises(ValueError, match="run_name"):
        TrainConfig.from_dict({"run_name": "a/b"})


def test_config_nested_model_and_round_trip() -> None:
    cfg = TrainConfig.from_dict({"model": {"width": 32, "memory_slots": 8, "use_gating": False}})
    student = cfg.model
    assert (student.width, student.memory_slots, student.use_gating, student.img_size) == (32, 8, False, 224)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_check_inputs_fails_fast(ray_local, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the embedded default store is relative to the working directory
    with pytest.raises(FileNotFoundError, match="jobs/pseudolabel.py"):
        check_training_inputs(TrainConfig(storage_path=str(tmp_path / "runs")))  # embedded default, absent here
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_training_inputs(TrainConfig(store=str(tmp_path / "nowhere"), storage_path=str(tmp_path / "runs")))
    with pytest.raises(ValueError, match="no train records with split 'test'"):
        check_training_inputs(TrainConfig(store=str(store), storage_path=str(tmp_path / "runs"), train_split="test",
                                          model=TINY))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write"):
        check_training_inputs(TrainConfig(store=str(store), storage_path=str(blocker / "runs"), model=TINY))


# --- data ------------------------------------------------------------------------------------
def _rows(store: Path, supervision: str) -> list[dict]:
    lines = (store / "manifest.jsonl").read_text().splitlines()
    batch = sample_rows({"text": lines}, root=str(store), source=str(store.parent / "input"), supervision=supervision,
                        train_split="train", val_split="val")
    return [{k: batch[k][i] for k in batch} for i in range(len(lines))]


def test_sample_rows_by_supervision(store: Path) -> None:
    pseudo = _rows(store, "pseudo")
    train, val = [r for r in pseudo if r["split"] == "train"], [r for r in pseudo if r["split"] == "val"]
    assert (len(train), len(val)) == (16, 4)
    assert train[0]["target"].endswith("pseudo-store/pseudo/img000.png")
    assert train[0]["image"].endswith("input/images/img000.png")
    assert val[0]["gt"].endswith("input/masks/img016.png")
    assert _rows(store, "gt")[0]["target"].endswith("input/masks/img000.png")
    assert _rows(store, "box")[0]["target"] == ""


def test_training_data_counts_and_teacher(ray_local, store: Path) -> None:
    data = training_data(TrainConfig(store=str(store), model=TINY))
    assert (data.n_train, data.n_val) == (16, 4) and data.teacher["name"] == "fake"
    assert training_data(TrainConfig(store=str(store), model=TINY, limit=5)).n_train == 5


def test_fill_boxes_clips() -> None:
    mask = fill_boxes((10, 20), [[2, 3, 5.5, 6], [15, -4, 40, 2]])
    assert mask[3:6, 2:6].all() and mask[0:2, 15:20].all()
    assert mask.sum() == 3 * 4 + 2 * 5


def test_augment_keeps_mask_aligned() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), bool)
    image[10:40, 5:30] = 255
    mask[10:40, 5:30] = True
    augment = Augment(scale_min=0.3, hflip=True, color=0.0, jpeg_prob=0.0)
    for seed in range(10):
        out, out_mask = augment(image, mask, np.random.default_rng(seed))
        assert out.shape == (64, 64, 3) and out_mask.shape == (64, 64) and out_mask.dtype == bool
        bright = out[..., 0] > 127
        assert (bright != out_mask).mean() < 0.03  # mask follows the pixels through crop and flip


def test_decode_and_augment_shapes_and_determinism(store: Path) -> None:
    rows = [r for r in _rows(store, "box") if r["split"] == "train"][:3]
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    decoded = decode_samples(batch, size=32)
    assert decoded["image"].shape == (3, 32, 32, 3) and decoded["target"].shape == (3, 32, 32)
    assert decoded["ok"].all() and set(np.unique(decoded["target"]).tolist()) <= {0, 1}
    augment = Augment(jpeg_prob=1.0)
    a = augment(decoded["image"][1], decoded["target"][1].astype(bool), np.random.default_rng(7))
    b = augment(decoded["image"][1], decoded["target"][1].astype(bool), np.random.default_rng(7))
    c = augment(decoded["image"][1], decoded["target"][1].astype(bool), np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])  # same draw, same result
    augmented = augment_samples(decoded, {"scale_min": 0.5, "hflip": True, "color": 0.2, "jpeg_prob": 0.0})
    assert augmented["image"].shape == decoded["image"].shape


def test_unreadable_samples_and_size_mismatch_are_flagged(store: Path, tmp_path: Path) -> None:
    rows = [r for r in _rows(store, "pseudo") if r["split"] == "train"][:3]
    rows[0] = {**rows[0], "image": str(tmp_path / "missing.png")}
    small = tmp_path / "small.png"
    small.write_bytes(imageio.encode_mask_png(np.ones((8, 8), bool)))
    rows[1] = {**rows[1], "target": str(small)}
    decoded = decode_samples({k: [r[k] for r in rows] for k in rows[0]}, size=32)
    assert decoded["ok"].tolist() == [False, False, True]
    assert "missing.png" in decoded["reason"][0] and "8x8" in decoded["reason"][1]


def test_loss_and_schedule() -> None:
    logits = torch.tensor([[[[10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert float(mask_loss(logits, target, dice_weight=1.0)) < 1e-3
    assert float(mask_loss(-logits, target, dice_weight=1.0)) > 5
    f = warmup_cosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert [round(f(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert math.isclose(f(10), 0.1) and f(6) < f(4)


# --- a real run ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(ray_local, store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same run trained for 3 epochs, rerun with epochs=4 (resumes), then the same again (done: returns)."""
    from bpiml.train.job import run_training

    root = tmp_path_factory.mktemp("train-runs")
    cfg = TrainConfig(
        store=str(store), storage_path=str(root / "runs"), run_name="tiny", epochs=3, batch_size=4, lr=2e-3,
        warmup_epochs=0.5, num_workers=1, cpus_per_worker=0.5, tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="test-train",
        register="tiny-student@champion", log_images=2, overlay_every=2, model=TINY, dice_weight=0.5,
    )
    first = run_training(cfg)
    # The rerun prunes checkpoints (best + latest are kept): read the first run's one now.
    first_state = torch.load(Path(first.best_checkpoint) / "checkpoint.pt", map_location="cpu", weights_only=True)
    second = run_training(cfg.replace(epochs=4))
    files = lambda: sorted(str(p) for p in Path(cfg.storage_path).rglob("*") if p.name != "bpiml_run.json")  # noqa: E731
    before = files()
    third = run_training(cfg.replace(epochs=4))
    return cfg, first, first_state, second, (third, before == files())


def test_training_loss_falls_and_checkpoints(runs) -> None:
    cfg, first, state, _, _ = runs
    losses = [row["loss"] for row in first.history]
    assert len(losses) == 3 and first.start_epoch == 0
    assert losses[-1] < losses[0]
    assert all(math.isfinite(row["val_f1"]) and 0 <= row["val_f1"] <= 1 for row in first.history)
    assert first.history[-1]["slots_used"] >= 1
    assert {"model_config", "model_state", "optimizer_state", "scheduler_state", "epoch", "train_config"} <= set(state)
    assert state["model_config"]["width"] == 32 and state["train_config"]["run_name"] == "tiny"
    assert (Path(cfg.storage_path) / "tiny" / "train_config.json").exists()


def test_rerun_resumes_from_latest_checkpoint(runs) -> None:
    _, first, _, second, _ = runs
    assert second.start_epoch == 3
    assert [row["epoch"] for row in second.history] == [0, 1, 2, 3]
    assert second.history[:3] == first.history
    assert second.mlflow_run_id == first.mlflow_run_id
    state = torch.load(Path(second.latest_checkpoint) / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["mlflow_run_id"] == first.mlflow_run_id


def test_a_finished_run_rerun_returns_its_result_without_training(runs) -> None:
    from mlflow.tracking import MlflowClient

    _, _, _, second, (third, untouched) = runs
    assert third.history == second.history and third.best_checkpoint == second.best_checkpoint
    assert third.start_epoch == 4 and third.mlflow_run_id == second.mlflow_run_id
    assert third.registered_model_uri == second.registered_model_uri and third.model_version == second.model_version
    client = MlflowClient(third.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(third.mlflow_run_id, "loss")) == [0, 1, 2, 3]
    assert client.get_run(third.mlflow_run_id).info.status == "FINISHED"
    assert untouched  # no worker group ran: no new checkpoint, no new Ray Train state


def test_mlflow_run_has_params_metrics_and_artifacts(runs) -> None:
    from mlflow.tracking import MlflowClient

    _, _, _, second, _ = runs
    client = MlflowClient(second.tracking_uri)
    run = client.get_run(second.mlflow_run_id)
    assert run.data.params["memory_bank_size"] == "16x32"
    assert run.data.params["teacher"] == "fake"
    assert run.data.params["model.alpha"] == "0.5"
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [0, 1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "overlays"} <= artifacts
    overlays = [a.path for a in client.list_artifacts(run.info.run_id, "overlays")]
    assert overlays == ["overlays/epoch_001", "overlays/epoch_002", "overlays/epoch_003"]  # every 2nd epoch, each run's last


def test_registered_model_loads_by_alias_and_predicts_any_size(runs) -> None:
    from mlflow.tracking import MlflowClient

    _, _, _, second, _ = runs
    assert second.registered_model_uri == "models:/tiny-student@champion"
    model = load_model(second.registered_model_uri, second.tracking_uri)
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 77, 53))
    assert logits.shape == (1, 1, 77, 53) and torch.isfinite(logits).all()
    version = MlflowClient(second.tracking_uri).get_model_version_by_alias("tiny-student", "champion")
    assert "teacher (pseudo masks): fake" in version.description and "val_f1" in version.description  # the card


def test_gt_supervision_keeps_authentic_images_as_empty_targets(store: Path, tmp_path: Path) -> None:
    lines = (store / "manifest.jsonl").read_text().splitlines()
    extra = dict(json.loads(lines[0]), id="authentic", boxes=[], mask=None)
    no_mask = dict(json.loads(lines[1]), id="forged-without-mask", mask=None)
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "manifest.jsonl").write_text("\n".join(lines + [json.dumps(extra), json.dumps(no_mask)]) + "\n")
    rows = sample_rows({"text": (copy / "manifest.jsonl").read_text().splitlines()}, root=str(copy),
                       source=str(store.parent / "input"), supervision="gt", train_split="train", val_split="val")
    by_id = dict(zip(rows["id"], zip(rows["split"], rows["target"], rows["boxes"], rows["reason"])))
    assert by_id["authentic"][:3] == ("train", "", "[]")  # trains on an empty mask
    assert by_id["forged-without-mask"][0] == "" and by_id["forged-without-mask"][3] == "no GT mask"
