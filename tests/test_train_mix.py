"""Training on several stores and from an earlier model: --add-store entries, the per-epoch mixing on
Ray Data, --init-from / --pretrain-store, and what the registered model records of the stores it saw."""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bpiml.data import cache
from bpiml.data.sample import make_sample_store
from bpiml.model import checkpoint as ckpt
from bpiml.model.student import StudentConfig, build_student
from bpiml.train import mixing
from bpiml.train.config import StoreSpec, TrainConfig

TINY = StudentConfig(width=32, memory_slots=16, img_size=64, backbone_weights="none")


# --- config ------------------------------------------------------------------------------------
def test_add_store_entries_from_repeated_flags() -> None:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(["--store", "s3://b/box", "--supervision", "box", "--store-weight", "3",
                              "--add-store", "s3://b/synth", "--add-store", "s3://b/more,weight=0.5,supervision=gt"])
    config = TrainConfig.from_args(args)
    assert config.stores() == [StoreSpec("s3://b/box", 3.0, "box"), StoreSpec("s3://b/synth", 1.0, "box"),
                               StoreSpec("s3://b/more", 0.5, "gt")]
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config  # round trip


@pytest.mark.parametrize("entry, says", [
    ("s3://b/x,weight=0", "weight must be a number > 0, got '0'"),
    ("s3://b/x,weight=-1", "weight must be a number > 0"),
    ("s3://b/x,weight=nan", "weight must be a number > 0"),
    ("s3://b/x,weight=heavy", "weight must be a number > 0, got 'heavy'"),
    ("s3://b/x,supervision=teacher", "supervision must be one of"),
    ("s3://b/x,colour=red", "bad option 'colour=red'"),
    ("s3://b/x,weight", "bad option 'weight'"),
    ("s3://b/x,weight=1,weight=2", "given twice"),
    (",weight=2", "must start with the store's URI"),
    ("weight=2", "must start with the store's URI"),
])
def test_bad_add_store_entries_name_the_entry(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"add_store entry {entry!r}")) as err:
        TrainConfig.from_dict({"add_store": [entry]})
    assert says in str(err.value)


def test_start_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="store_weight"):
        TrainConfig.from_dict({"store_weight": 0})
    with pytest.raises(ValueError, match="pretrain_store 's3://b/s' needs pretrain_epochs"):
        TrainConfig.from_dict({"pretrain_store": "s3://b/s"})
    with pytest.raises(ValueError, match="pretrain_epochs 2 needs a pretrain_store"):
        TrainConfig.from_dict({"pretrain_epochs": 2})
    with pytest.raises(ValueError, match="init_from 'runs/a' and pretrain_store"):
        TrainConfig.from_dict({"init_from": "runs/a", "pretrain_store": "s3://b/s", "pretrain_epochs": 1})
    with pytest.raises(ValueError, match="pretrain_supervision"):
        TrainConfig.from_dict({"pretrain_store": "s3://b/s", "pretrain_epochs": 1, "pretrain_supervision": "boxes"})
    main = TrainConfig(run_name="r", store="s3://b/box", supervision="box", add_store=["s3://b/c"], register="m@a",
                       pretrain_store="s3://b/synth", pretrain_epochs=1, epochs=5, warmup_epochs=2.0)
    pre = main.pretrain_config()
    assert (pre.run_name, pre.store, pre.supervision, pre.epochs, pre.warmup_epochs) == ("r-pretrain", "s3://b/synth",
                                                                                        "gt", 1, 1.0)
    assert (pre.add_store, pre.register, pre.pretrain_store, pre.seed, pre.model) == ([], "", "", main.seed, main.model)


def test_default_run_name_is_unchanged_by_the_new_fields_at_their_defaults() -> None:
    """Runs named before --add-store / --init-from / --pretrain-store / --s3-endpoint existed keep their names
    (resume); the names changed once, with the shared flag names (--gpus-per-worker, --max-reject-rate)."""
    assert TrainConfig().default_run_name() == "student-99ad0a9cbf"
    old = TrainConfig(store="s3://b/pseudo", supervision="gt", seed=3,
                      model=StudentConfig(width=32, memory_slots=16, img_size=64))
    assert old.default_run_name() == "student-c48db609e7"
    assert old.replace(add_store=["s3://b/x"]).default_run_name() != old.default_run_name()
    assert old.replace(init_from="runs/a").default_run_name() != old.default_run_name()


def test_epoch_shares_and_the_draw_of_one_block() -> None:
    assert mixing.epoch_draws([10_000, 300], [1.0, 1.0]) == [5150.0, 5150.0]
    assert mixing.epoch_draws([300, 100], [1.0, 3.0]) == [100.0, 300.0]
    batch = {"id": np.asarray([f"r{i}" for i in range(50)], dtype=object), "x": np.arange(50)}
    first, second = (mixing.draw_rows(batch, times=2, fraction=0.25, store=1) for _ in range(2))
    counts = collections.Counter(first["id"].tolist())
    assert set(counts.values()) <= {2, 3} and set(counts) == set(batch["id"]) and 100 < len(first["id"]) < 150
    assert all(x == int(rid[1:]) for rid, x in zip(first["id"], first["x"]))  # columns stay together
    assert first["store"].tolist() == [1] * len(first["id"])
    assert first["id"].tolist() != second["id"].tolist()  # drawn anew each call (each epoch)
    sub = mixing.draw_rows(batch, times=0, fraction=0.5, store=0)["id"].tolist()
    assert len(set(sub)) == len(sub) < 50  # subsampled without repeats


def test_architecture_diff_names_fields_and_ignores_img_size() -> None:
    have = TINY.to_dict()
    assert ckpt.architecture_diff(have, TINY.replace(img_size=128, backbone_weights="auto").to_dict()) == []
    assert ckpt.architecture_diff(have, TINY.replace(width=48, use_memory=False).to_dict()) == [
        "use_memory (True -> False)", "width (32 -> 48)"]


def test_the_best_checkpoint_of_a_run_folder_is_the_best_scored(tmp_path: Path) -> None:
    for stamp, score in (("00-00-01", 0.2), ("00-00-02", 0.7), ("00-00-03", 0.4)):  # the latest is not the best
        folder = tmp_path / f"checkpoint_2026-01-01_{stamp}.000000"
        folder.mkdir()
        (folder / ckpt.HISTORY_FILE).write_text(json.dumps([{"score": 0.0}, {"score": score}]))
    (tmp_path / "checkpoint_2026-01-01_00-00-04.000000").mkdir()  # torn: no history, ranked last
    assert Path(ckpt.find_best(str(tmp_path))).name == "checkpoint_2026-01-01_00-00-02.000000"
    assert ckpt.find_best(str(tmp_path / "empty")) is None


# --- the per-epoch mixing on Ray Data -------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mix-stores")
    return {"a": make_sample_store(str(root / "a"), n_images=44, seed=1, size=64, val_fraction=0.1),
            "b": make_sample_store(str(root / "b"), n_images=300, seed=2, size=64, val_fraction=0.0),
            "synth": make_sample_store(str(root / "synth"), n_images=12, seed=3, size=64, val_fraction=0.25),
            "box": make_sample_store(str(root / "box"), n_images=8, seed=4, size=64, val_fraction=0.25)}


def _epoch(ds) -> tuple[collections.Counter, collections.Counter]:
    """(samples per store, draws per (store, id)) of one pass over the train dataset."""
    per_store, per_id = collections.Counter(), collections.Counter()
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        for store, rid in zip(batch["store"].tolist(), batch["id"].tolist()):
            per_store[store] += 1
            per_id[store, rid] += 1
    return per_store, per_id


def test_weights_3_to_1_draw_3_to_1_and_each_epoch_draws_anew(ray_local, stores: dict[str, str]) -> None:
    from bpiml.train.datasets import training_data

    config = TrainConfig(store=stores["a"], supervision="gt", store_weight=3, add_store=[f"{stores['b']},weight=1"],
                         model=TINY.replace(img_size=32), num_workers=1)
    data = training_data(config)
    assert (data.n_train, data.n_val) == (340, 4)  # an epoch: all stores' train records; val: --store's
    assert [round(p.draws) for p in data.parts] == [255, 85]
    epochs = [_epoch(data.train) for _ in range(2)]
    for per_store, per_id in epochs:
        assert 240 <= per_store[0] <= 280  # 40 records x 6, + each once more with p = 0.375
        assert 2.2 < per_store[0] / per_store[1] < 4.2  # ~255 : ~85
        assert {n for (store, _), n in per_id.items() if store == 0} <= {6, 7}
        assert {n for (store, _), n in per_id.items() if store == 1} == {1}  # subsampled, never repeated
    drawn = [{key for key, n in per_id.items() if key[0] == 1} for _, per_id in epochs]
    repeated = [{key for key, n in per_id.items() if n == 7} for _, per_id in epochs]
    assert drawn[0] != drawn[1] and repeated[0] != repeated[1]  # a fresh draw each epoch


def test_training_leaves_ray_data_a_whole_cpu(ray_local, stores: dict[str, str], tmp_path: Path) -> None:
    """Workers holding 1.5 of 2 CPUs would leave Ray Data's repartition tasks (one whole CPU) waiting for
    ever at the first validation: the job refuses before any work, naming what it needs."""
    from bpiml.train.job import run_training

    config = TrainConfig(store=stores["a"], supervision="gt", num_workers=1, cpus_per_worker=1.5, resource_wait_s=0,
                         storage_path=str(tmp_path / "runs"), model=TINY)
    with pytest.raises(ValueError, match=r"1 for data tasks\) needs 2\.5 CPUs"):
        run_training(config)


# --- pretrain on one store, fine-tune on another (one job) ----------------------------------------
@pytest.fixture(scope="module")
def pretrained_run(ray_local, stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    from bpiml.train.job import run_training

    root = tmp_path_factory.mktemp("mix-runs")
    config = TrainConfig(store=stores["box"], supervision="box", add_store=[f"{stores['a']},weight=0.5,supervision=gt"],
                         pretrain_store=stores["synth"], pretrain_epochs=1,
                         pretrain_supervision="gt", storage_path=str(root / "runs"), run_name="mix", epochs=1,
                         batch_size=4, lr=2e-3, warmup_epochs=0.5, num_workers=1, cpus_per_worker=0.5,
                         tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="test-mix", register="mix@test",
                         log_images=0, model=TINY, cache_decoded=False)  # uncached: rows drawn, then decoded
    return config, run_training(config)


def test_pretrain_then_fine_tune_starts_from_the_pretrained_weights(pretrained_run, stores: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    from bpiml.train.registry import read_run_state

    config, result = pretrained_run
    pre_dir = Path(config.storage_path) / "mix-pretrain"
    pre_best = read_run_state(str(pre_dir))["finished"]["result"]["best_checkpoint"]
    pre_state = ckpt.load_state(pre_best)
    params = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.params
    assert params["init_from"] == pre_best and params["init_sha256"] == cache.sha256_file(
        Path(pre_best) / ckpt.CHECKPOINT_FILE)
    # the worker's model held exactly the pretrained weights before its first step, not a random init
    assert params["init_loaded_sha256"] == ckpt.state_fingerprint(pre_state["model_state"])
    torch.manual_seed(config.seed)
    assert params["init_loaded_sha256"] != ckpt.state_fingerprint(build_student(TINY).state_dict())
    assert [s["uri"] for s in json.loads(params["stores"])] == [stores["box"], stores["a"], stores["synth"]]
    assert params["n_train"] == "46" and len(result.history) == 1  # an epoch: 6 box + 40 added records


def test_registered_model_lists_every_store_it_saw(pretrained_run) -> None:
    from bpiml.runtime.tracking import download_model

    config, result = pretrained_run
    _, _, metadata, _ = ckpt.read_exported(download_model(result.registered_model_uri, result.tracking_uri,
                                                         str(Path(config.storage_path) / "dl")))
    seen = [(Path(s["uri"]).name, s["role"], s["supervision"], s["weight"]) for s in metadata["stores"]]
    assert seen == [("box", "train", "box", 1.0), ("a", "train", "gt", 0.5), ("synth", "init", "gt", 1.0)]
    assert metadata["init_from"]["uri"].startswith(str(Path(config.storage_path) / "mix-pretrain"))
    assert [Path(s["uri"]).name for s in metadata["init_from"]["stores"]] == ["synth"]
    assert metadata["backbone_weights_source"].startswith("init_from")


def test_rerun_trains_neither_part_again_and_init_checks_the_architecture(pretrained_run) -> None:
    from bpiml.train.init import resolve_init
    from bpiml.train.job import run_training

    config, result = pretrained_run
    pre_dir = str(Path(config.storage_path) / "mix-pretrain")
    files = lambda: sorted(str(p) for p in Path(config.storage_path).rglob("*") if p.name != "bpiml_run.json")
    before = files()
    # a resumed run that started from a model needs no backbone weights: `imagenet` (unreachable offline) is not fetched
    again = run_training(config.replace(model=TINY.replace(backbone_weights="imagenet")))
    assert again.history == result.history and again.mlflow_run_id == result.mlflow_run_id
    assert again.start_epoch == 1 and again.model_version == result.model_version
    assert files() == before  # no worker group ran for either part
    assert resolve_init(pre_dir, TINY.replace(img_size=128), result.tracking_uri).stores[0]["supervision"] == "gt"
    registered = resolve_init(result.registered_model_uri, TINY, result.tracking_uri)  # models:/ through MLflow
    assert [s["role"] for s in registered.stores] == ["train", "train", "init"]
    assert registered.record()["init_from"]["sha256"] == resolve_init(pre_dir, TINY, result.tracking_uri).sha256
    with pytest.raises(ValueError, match=r"architecture differs .* width \(32 -> 48\)"):
        resolve_init(pre_dir, TINY.replace(width=48), result.tracking_uri)
    with pytest.raises(FileNotFoundError, match="init_from .*nowhere"):
        resolve_init(pre_dir + "/nowhere", TINY, result.tracking_uri)
