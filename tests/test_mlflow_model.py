"""The registered model is an MLflow Model: pyfunc from the registry equals predict_batch, `mlflow models serve`
answers HTTP, the model card holds what training knew, loading never unpickles or runs the model's code, and
the older bare folder still loads."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from packaging.requirements import Requirement

from bpiml.data import imageio
from bpiml.evaluation import figures, inference
from bpiml.evaluation.evaluate import EvalConfig
from bpiml.evaluation.streaming_metrics import block_sums, collect
from bpiml.evaluation.tables import log_to_mlflow, stats_table
from bpiml.model import checkpoint, mlflow_model
from bpiml.model.student import StudentConfig, build_student
from bpiml.runtime import tracking
from bpiml.runtime.loopback import free_port
from bpiml.train import registry
from bpiml.train.config import TrainConfig
from bpiml.train.data import TrainingData

TINY = StudentConfig(width=16, memory_slots=4, img_size=64, backbone_weights=None)
SHA = "ab12" * 16
NAME = "tiny-pyfunc"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny student registered the way training registers it: (tracking URI, model URI, student, run id)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    student = build_student(TINY).eval()
    config = TrainConfig(store=str(root / "boxes"), supervision="box", register=f"{NAME}@champion",
                         add_store=[f"{root / 'synth'},weight=0.5,supervision=gt"])
    state = {"model_config": student.config.to_dict(), "model_state": student.state_dict(), "epoch": 2}
    data = TrainingData(train=None, val=None, n_train=0, n_val=0, skipped={}, source=str(root / "input"),
                        teacher={"name": "grabcut", "version": "3"})
    run_id = tracking.start_or_resume_run(uri, "exp", run_name="train")
    model_uri, version = registry.register(
        config, state, str(root / "ckpt"), {"val_f1": 0.4321, "val_iou": 0.3, "loss": 0.2}, data, uri, run_id,
        backbone={"source": "https://hub.example/model.safetensors", "sha256": SHA})
    assert (model_uri, version) == (f"models:/{NAME}@champion", "1")
    return uri, model_uri, student, run_id


def test_pyfunc_from_the_registry_equals_predict_batch(registered, tmp_path) -> None:
    uri, model_uri, student, _ = registered
    images = _images()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # an earlier test in this process may have pointed the registry elsewhere
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    out = pyfunc.predict(pd.DataFrame({"image": [imageio.encode_image(im, "png") for im in images]}))
    expected = inference.predict_batch(inference.load_model(model_uri, uri), images)  # what jobs/predict.py runs
    assert list(out.columns) == ["probs", "score"] and out["score"].dtype == np.float32
    for probs, score, want in zip(out["probs"], out["score"], expected):
        assert probs.shape == want.shape and probs.dtype == np.float32
        np.testing.assert_allclose(probs, want, atol=1e-6)
        assert score == pytest.approx(float(want.max()), abs=1e-6)
    np.testing.assert_allclose(expected[0], inference.predict_batch(student, images[:1])[0], atol=1e-6)
    folder = Path(tracking.download_model(model_uri, uri, str(tmp_path)))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and flavor["code"] == "code"
    assert not [p.name for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth")]
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "binary", "name": "image", "required": True}]
    assert (folder / "code" / "bpiml" / "model" / "infer.py").is_file()
    requirements = (folder / "requirements.txt").read_text().split()
    assert {Requirement(r).name for r in requirements} >= {"torch", "timm", "safetensors", "numpy", "pillow", "mlflow"}


def test_the_model_card_is_the_readme_and_the_version_description(registered, tmp_path) -> None:
    uri, model_uri, _, _ = registered
    version = tracking.client(uri).get_model_version_by_alias(NAME, "champion")
    readme = mlflow_model.read_card(tracking.download_model(model_uri, uri, str(tmp_path)))
    assert readme == version.description
    for text in ("boxes | train | box | 1.0", "synth | train | gt | 0.5", "teacher (pseudo masks): grabcut (version 3)", SHA,
                 "https://hub.example/model.safetensors", "val_f1: 0.4321", "val_iou: 0.3000", "Intended use", "Limits"):
        assert text in readme, text
    assert version.tags["bpiml.epoch"] == "2" and "train:" in version.tags["bpiml.stores"]
    assert version.tags["bpiml.checkpoint"].endswith("ckpt")


def _exploit(target: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    return pickle.dumps(Exploit())


def test_loading_never_unpickles_nor_runs_the_models_code(registered, tmp_path) -> None:
    """A version whose weights are a pickle and whose Python code would run something is refused by
    every bpiml loader, and neither the pickle nor the code ran."""
    uri, model_uri, _, run_id = registered
    folder = Path(tracking.download_model(model_uri, uri, str(tmp_path / "dl")))
    target = tmp_path / "pwned"
    (folder / "artifacts" / checkpoint.WEIGHTS_FILE).write_bytes(_exploit(target))
    code = next(folder.glob("*.py"))  # the models-from-code file MLflow would run
    code.write_text(f"import pathlib\npathlib.Path({str(target)!r}).touch()\n" + code.read_text())
    planted, _ = tracking.register_model_folder(uri, run_id, str(folder), "planted", "champion")
    with pytest.raises(ValueError, match="refusing to load it"):
        inference.load_model(planted, uri)
    with pytest.raises(ValueError, match="refusing to load it"):
        checkpoint.load_exported(folder)
    assert not target.exists(), "a planted pickle or the model's code ran"


def test_an_older_bare_folder_still_loads(registered, tmp_path) -> None:
    uri, _, student, run_id = registered
    folder = checkpoint.export(student, tmp_path / "bare", {"epoch": 1})
    old, _ = tracking.register_model_folder(uri, run_id, str(folder), "bare-folder", "champion")
    image = _images()[1]
    np.testing.assert_allclose(inference.predict_probs(inference.load_model(old, uri), image),
                               inference.predict_probs(student, image), atol=1e-6)
    sources = [v.source for v in tracking.client(uri).search_model_versions(f"run_id='{run_id}'")]
    assert len(sources) == len(set(sources)) >= 2  # one run, several versions: each its own files


def _post(url: str, body: dict, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def _wait_for_ping(url: str, server: subprocess.Popen, log: Path, deadline_s: float = 90.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"no answer from {url} in {deadline_s} s:\n{log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_an_image(registered, tmp_path) -> None:
    uri, model_uri, _, _ = registered
    port, log = free_port(), tmp_path / "serve.log"
    bin_dir = str(Path(sys.executable).parent)  # MLflow runs `uvicorn` from PATH: this venv's
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    with log.open("w") as out:
        server = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                   "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_ping(f"http://127.0.0.1:{port}/ping", server, log)
        images = _images()
        encoded = [base64.b64encode(imageio.encode_image(im, "png")).decode() for im in images]
        body = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
        rows = _post(f"http://127.0.0.1:{port}/invocations", body)["predictions"]
        expected = inference.predict_batch(inference.load_model(model_uri, uri), images)
        assert len(rows) == 2
        for row, want in zip(rows, expected):
            np.testing.assert_allclose(np.asarray(row["probs"], np.float32), want, atol=1e-6)
            assert row["score"] == pytest.approx(float(want.max()), abs=1e-6)
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and the uvicorn it started), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- figures in MLflow --------------------------------------------------------------------------------
def _stats(manipulated: list[float], authentic: list[float]) -> dict:
    rows = [{"set": "a", "degradation": "none", "manipulated": m, "score": s, "f1": 0.5, "iou": 0.4, "auc": 0.6,
             "area": 0.0, "error": ""} for m, scores in ((True, manipulated), (False, authentic)) for s in scores]
    return collect(block_sums(rows, threshold=0.5))


def test_image_f1_against_the_threshold_and_calibration_come_from_the_histograms() -> None:
    stats = _stats([0.95, 0.75, 0.35], [0.65, 0.15])[("a", "none")]
    thresholds, f1 = figures.f1_by_threshold(stats)
    at_half = int(np.argmin(np.abs(thresholds - 0.5)))
    assert thresholds[at_half] == pytest.approx(0.5)
    assert f1[at_half] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 0.95, 0.75; FP 0.65; FN 0.35
    assert f1[0] == pytest.approx(2 * 3 / (2 * 3 + 2))  # everything called manipulated
    mean, share, count = figures.calibration(stats)
    np.testing.assert_allclose(mean, [0.15, 0.35, 0.65, 0.75, 0.95], atol=2e-3)
    assert share.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0] and count.tolist() == [1, 1, 1, 1, 1]


def test_evaluation_logs_its_figures_and_fills_the_model_cards_evaluation(registered, tmp_path) -> None:
    uri, _, student, run_id = registered
    folder = checkpoint.export(student, tmp_path / "bare")
    card = mlflow_model.model_card({"teacher": "sam"}, {"val_f1": 0.5})
    model_uri, _ = tracking.register_model_folder(uri, run_id, str(folder), "evaluated", "champion", description=card)
    stats = _stats([0.9, 0.8, 0.3], [0.6, 0.1])
    table = stats_table(stats, ["a"], {}, ["none"])
    config = EvalConfig(model=model_uri, datasets=["a=x.json"], out="unused", tracking_uri=uri, experiment="eval")
    run_id = log_to_mlflow(config, table, {}, ["a"], stats)
    version = tracking.client(uri).get_model_version_by_alias("evaluated", "champion")
    assert version.tags["bpiml.evaluation_run"] == run_id
    section = version.description.split(mlflow_model.EVAL_HEADING)[1]
    assert f"evaluation run {run_id}" in section
    assert "| set | image_auc | image_bacc | pixel_auc | pixel_f1 | pixel_iou |" in section
    assert "| a | 0.8333 | 0.5833 | 0.6000 | 0.5000 | 0.4000 |" in section  # AUC 5/6 pairs; bACC (2/3 + 1/2) / 2
    assert version.description.startswith(card.split(mlflow_model.EVAL_HEADING)[0]) and mlflow_model.LIMITS_HEADING in section
    logged = [f.path for f in tracking.client(uri).list_artifacts(run_id, "evaluation/figures")]
    assert sorted(logged) == ["evaluation/figures/image_f1_by_threshold.png",
                              "evaluation/figures/image_score_reliability.png", "evaluation/figures/metrics.png"]
    png = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=logged[0], tracking_uri=uri))
    assert imageio.decode_image(png.read_bytes())[0].shape[0] > 100


def test_training_logs_overlays_every_n_epochs_and_at_the_end() -> None:
    def epochs(**kw) -> list[int]:
        config = TrainConfig(**kw)
        return [e for e in range(config.epochs) if config.logs_overlays(e)]

    assert epochs(epochs=12) == [4, 9, 11]  # default: every 5 epochs, and the last
    assert epochs(epochs=4, overlay_every=0) == [3]
    assert epochs(epochs=3, overlay_every=1) == [0, 1, 2]
    with pytest.raises(ValueError, match="overlay_every"):
        TrainConfig(overlay_every=-1).validate()
    assert TrainConfig(overlay_every=2).default_run_name() == TrainConfig().default_run_name()  # a logging option


def test_requirements_are_the_projects_pinned_also_from_a_checkout_that_is_not_installed(monkeypatch) -> None:
    installed = mlflow_model.pip_requirements()
    assert "safetensors==" + importlib.metadata.version("safetensors") in installed
    assert "torch==" + importlib.metadata.version("torch") in installed

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)  # a `ray job submit --working-dir` copy
    from_checkout = mlflow_model.pip_requirements()
    assert "torch==" + importlib.metadata.version("torch") in from_checkout
    assert {r.split("==")[0].split("[")[0] for r in from_checkout} >= {"timm", "numpy", "pillow", "mlflow", "safetensors"}
