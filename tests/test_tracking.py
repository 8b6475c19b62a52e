"""MLflow tracking helpers against a real sqlite-backed MLflow (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bpiml.data import visual
from bpiml.data.naming import file_stem
from bpiml.runtime import tracking


@pytest.fixture()
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BPIML_PROJECT_DIR", str(tmp_path / "proj"))
    default = tracking.resolve_tracking_uri()
    assert default == f"sqlite:///{tmp_path / 'proj' / '.bpiml' / 'mlflow.db'}"
    assert (tmp_path / "proj" / ".bpiml").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.resolve_tracking_uri() == "http://mlflow:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_artifact_location_beside_sqlite(tmp_path: Path) -> None:
    loc = tracking.artifact_location(f"sqlite:///{tmp_path}/db/mlflow.db", "my exp/1")
    assert loc == (tmp_path / "db" / "mlartifacts" / file_stem("my exp/1")).as_uri()
    assert tracking.artifact_location("http://server:5000", "x") is None


def test_flatten_params() -> None:
    flat = tracking.flatten_params({"a": 1, "b": {"c": True, "d": None}, "e": "text", "f": [1, 2], "g": "x" * 7000})
    assert flat == {"a": "1", "b.c": "true", "b.d": "null", "e": "text", "f": "[1, 2]", "g": "x" * 6000}


def test_overlay_strip() -> None:
    image = np.full((4, 5, 3), 7, np.uint8)
    target = np.zeros((4, 5), bool)
    target[1, 2] = True
    prob = np.full((4, 5), 0.5, np.float32)
    strip = visual.overlay_strip(image, target, prob)
    assert strip.shape == (4, 15, 3) and strip.dtype == np.uint8
    assert strip[1, 5 + 2].tolist() == [255, 255, 255] and strip[0, 5].tolist() == [0, 0, 0]
    assert strip[0, 10].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="mask 0 has shape"):
        visual.overlay_strip(image, np.zeros((3, 5)))


def test_run_resume_params_and_metrics(uri: str) -> None:
    run_id = tracking.start_or_resume_run(uri, "exp", None, "first")
    assert tracking.start_or_resume_run(uri, "exp", run_id) == run_id  # resumes the same run
    other = tracking.start_or_resume_run(uri, "exp", "0123456789abcdef0123456789abcdef")
    assert other != run_id  # unknown id: a new run instead of a crash

    logged = tracking.log_params(uri, run_id, {"epochs": 3, "model": {"width": 32}})
    assert logged == {"epochs": "3", "model.width": "32"}
    again = tracking.log_params(uri, run_id, {"epochs": 5, "model": {"width": 32}, "new": "x"})
    assert again == {"new": "x"}
    run = tracking.client(uri).get_run(run_id)
    assert run.data.params["epochs"] == "3" and run.data.tags["resumed.epochs"] == "5"

    tracking.log_metrics(uri, run_id, {"loss": 0.5, "val_f1": float("nan"), "flag": True}, step=2)
    history = tracking.client(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(2, 0.5)]
    assert not tracking.client(uri).get_metric_history(run_id, "val_f1")

    tracking.log_overlays(uri, run_id, [("a/b", np.zeros((4, 8, 3), np.uint8))], "overlays/epoch_000")
    files = [a.path for a in tracking.client(uri).list_artifacts(run_id, "overlays/epoch_000")]
    assert files == [f"overlays/epoch_000/{file_stem('a/b')}.png"]
    tracking.end_run(uri, run_id)
    assert tracking.client(uri).get_run(run_id).info.status == "FINISHED"


def test_register_an_exported_student_with_alias(uri: str, tmp_path) -> None:
    import torch

    from bpiml.evaluation.inference import load_model
    from bpiml.model import checkpoint
    from bpiml.model.student import StudentConfig, build_student

    model = build_student(StudentConfig(width=16, memory_slots=4, img_size=64)).eval()
    folder = checkpoint.export(model, tmp_path / "export", {"epoch": 1})
    run_id = tracking.start_or_resume_run(uri, "exp")
    model_uri, version = tracking.register_model_folder(uri, run_id, str(folder), "conv", "champion")
    assert (model_uri, version) == ("models:/conv@champion", "1")
    loaded = load_model(model_uri, uri)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    _, version2 = tracking.register_model_folder(uri, run_id, str(folder), "conv", "champion")
    assert version2 == "2"
    assert str(tracking.client(uri).get_model_version_by_alias("conv", "champion").version) == "2"
