"""One rule for which model a URI means (`bpiml.model.locate`), the same for predict/evaluate/serve
(`inference.load_model`) and train --init-from (`init.load_init`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bpiml.evaluation import inference
from bpiml.model import checkpoint as ckpt
from bpiml.model.locate import Located, check_model, locate, open_model
from bpiml.model.student import StudentConfig, build_student
from bpiml.train.init import load_init

TINY = StudentConfig(img_size=64, width=32, memory_slots=8)


def _student(seed: int):
    torch.manual_seed(seed)
    return build_student(TINY).eval()


def _run_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """A run folder of three checkpoints whose latest is not its best; returns it and each one's fingerprint."""
    prints = {}
    for seed, (stamp, score) in enumerate((("00-00-01", 0.2), ("00-00-02", 0.7), ("00-00-03", 0.4))):
        folder = root / f"checkpoint_2026-01-01_{stamp}.000000"
        folder.mkdir(parents=True)
        model = _student(seed)
        state = {"model_config": model.config.to_dict(), "model_state": model.state_dict(), "epoch": seed}
        ckpt.save(folder, state, [{"score": 0.0}, {"score": score}], "{}")
        prints[stamp] = ckpt.state_fingerprint(model.state_dict())
    return root, prints


def test_a_run_folder_means_its_best_checkpoint_for_every_job(tmp_path: Path) -> None:
    run, prints = _run_folder(tmp_path / "run")
    found = locate(str(run))
    assert found.kind == "checkpoint" and Path(found.path).parent.name == "checkpoint_2026-01-01_00-00-02.000000"
    assert ckpt.state_fingerprint(inference.load_model(str(run)).state_dict()) == prints["00-00-02"]  # not the latest
    assert ckpt.state_fingerprint(load_init(str(run), "").state) == prints["00-00-02"]
    assert check_model(str(run)) == ""


def test_an_exported_folder_and_an_mlflow_model_folder_mean_themselves(tmp_path: Path) -> None:
    model = _student(5)
    exported = ckpt.export(model, tmp_path / "exported", {"note": "x"})
    nested = ckpt.export(model, tmp_path / "mlflow-model" / "artifacts")
    want = ckpt.state_fingerprint(model.state_dict())
    for folder, where in ((exported, exported), (tmp_path / "mlflow-model", nested)):
        found = locate(str(folder))
        assert (found.kind, Path(found.path)) == ("exported", where)
        with open_model(str(folder)) as local:
            assert local.kind == "exported" and (Path(local.path) / ckpt.WEIGHTS_FILE).is_file()
        assert ckpt.state_fingerprint(inference.load_model(str(folder)).state_dict()) == want
        assert ckpt.state_fingerprint(load_init(str(folder), "").state) == want
    assert load_init(str(exported), "").sha256 == load_init(str(tmp_path / "mlflow-model"), "").sha256


def test_a_checkpoint_file_or_folder_means_itself(tmp_path: Path) -> None:
    run, prints = _run_folder(tmp_path / "run")
    latest = run / "checkpoint_2026-01-01_00-00-03.000000"
    for uri in (latest, latest / ckpt.CHECKPOINT_FILE):
        assert locate(str(uri)) == Located("checkpoint", str(latest / ckpt.CHECKPOINT_FILE))
        assert ckpt.state_fingerprint(inference.load_model(str(uri)).state_dict()) == prints["00-00-03"]


def test_no_model_is_an_error_naming_the_forms(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "torn" / "checkpoint_2026-01-01_00-00-01.000000").mkdir(parents=True)  # no checkpoint file in it
    for uri in (tmp_path / "missing", tmp_path / "empty", tmp_path / "torn"):
        with pytest.raises(FileNotFoundError, match=r"no checkpoint or model at .*models:/NAME@ALIAS"):
            locate(str(uri))
        with pytest.raises(FileNotFoundError, match=r"no checkpoint or model"):
            check_model(str(uri))
        with pytest.raises(FileNotFoundError, match=r"init_from .*no checkpoint or model"):
            load_init(str(uri), "")
    (tmp_path / "empty" / "x.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError):
        inference.load_model(str(tmp_path / "empty"))
