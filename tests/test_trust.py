"""Trust boundaries: nothing from a store or a model artifact runs code or reads outside where it
belongs, and credentials in a URI never reach a log line, a saved config, bpiml_run.json or MLflow."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from bpiml.config import redact
from bpiml.data import storage
from bpiml.model import checkpoint, mlflow_model
from bpiml.model.student import StudentConfig, build_student
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.store import resolve_source, source_reference
from bpiml.runtime import logs, tracking
from bpiml.train import registry

SECRET = "hunter2-s3cr3t"
URI = f"https://alice:{SECRET}@mlflow.example.com/api?run=1&X-Amz-Signature={SECRET}"


# --- credentials ------------------------------------------------------------------------------------
def test_redact_hides_passwords_and_secret_query_parameters_only() -> None:
    assert redact(URI) == "https://alice:***@mlflow.example.com/api?run=1&X-Amz-Signature=***"
    assert redact("s3://bucket/key user@host.com http://host/a@b") == "s3://bucket/key user@host.com http://host/a@b"
    assert redact({"a": [URI], "n": 3}) == {"a": [redact(URI)], "n": 3}


def test_a_password_in_the_tracking_uri_moves_to_mlflows_variables_and_never_reaches_the_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bpiml.runtime import credentials, raycluster

    assert credentials.split_userinfo("http://al%40ice:p%3Ass@host:5000/x?y=1") == ("http://host:5000/x?y=1",
                                                                                   "al@ice", "p:ss")
    assert credentials.split_userinfo("sqlite:////tmp/a@b.db") == ("sqlite:////tmp/a@b.db", "", "")
    env = {"MLFLOW_TRACKING_URI": f"https://alice:{SECRET}@mlflow.example.com:5000"}
    assert credentials.move_uri_credentials(env) and env == {
        "MLFLOW_TRACKING_URI": "https://mlflow.example.com:5000", "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": SECRET}
    kept = {"MLFLOW_TRACKING_URI": f"https://bob:{SECRET}@h", "MLFLOW_TRACKING_PASSWORD": "already"}
    credentials.move_uri_credentials(kept)
    assert kept["MLFLOW_TRACKING_PASSWORD"] == "already" and kept["MLFLOW_TRACKING_URI"] == "https://h"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{SECRET}@mlflow.example.com")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://key:{SECRET}@minio:9000")
    forwarded = raycluster.worker_env()  # what a runtime_env (the dashboard, Ray's logs) would show
    assert forwarded["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert forwarded["AWS_ENDPOINT_URL"] == "http://minio:9000" and SECRET not in json.dumps(forwarded)


def test_saved_configs_mlflow_params_and_run_state_are_redacted(tmp_path: Path) -> None:
    cfg = PseudoLabelConfig(store=f"s3://bucket/store?token={SECRET}", s3_endpoint=f"http://u:{SECRET}@minio:9000")
    cfg.save(str(tmp_path / "config.json"))
    assert SECRET not in (tmp_path / "config.json").read_text()
    assert cfg.to_dict()["s3_endpoint"].endswith("@minio:9000")  # what the job's own workers get: unchanged
    assert not any(SECRET in v for v in tracking.flatten_params({"tracking_uri": URI, "nested": {"x": URI}}).values())
    registry.write_run_state(str(tmp_path), {"tracking_uri": URI})
    assert SECRET not in (tmp_path / registry.RUN_STATE_FILE).read_text()


def test_log_lines_and_tracebacks_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("bpiml.test_trust")
    stream = io.StringIO()
    logger.handlers = [logging.StreamHandler(stream)]
    monkeypatch.setattr("sys.excepthook", None)  # restored after the test; setup_logging replaces it
    logs.setup_logging(logging.INFO, logger)
    try:
        raise FileNotFoundError(f"no manifest at {URI}")
    except FileNotFoundError:
        logger.exception("could not read %s", URI)
    text = stream.getvalue()
    assert "could not read https://alice:***@" in text and "FileNotFoundError" in text and SECRET not in text
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    import sys

    try:
        raise RuntimeError(URI)
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "RuntimeError: https://alice:***@" in err.getvalue() and SECRET not in err.getvalue()


# --- model artifacts ---------------------------------------------------------------------------------
class _Exploit:
    """Unpickling this runs code: it creates the file named by `target`."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


TINY = StudentConfig(width=16, memory_slots=4, img_size=64, backbone_weights=None)


@pytest.mark.parametrize(("planted", "form"), [("pickle", "folder"), ("torch.save", "folder"), ("pickle", "mlflow")])
def test_a_registered_model_with_a_planted_pickle_is_refused(tmp_path: Path, planted: str, form: str) -> None:
    """`form`: an exported folder (older registry format) or the MLflow Model the registry holds now."""
    folder = checkpoint.export(build_student(TINY), tmp_path / "model")
    if form == "mlflow":
        folder = mlflow_model.save(folder, tmp_path / "mlflow-model", card="")
    assert checkpoint.load_exported(folder) is not None  # the genuine artifact loads
    target = tmp_path / "pwned"
    weights = checkpoint.find_exported(folder) / checkpoint.WEIGHTS_FILE
    if planted == "pickle":
        weights.write_bytes(pickle.dumps(_Exploit(str(target))))
    else:
        torch.save({"model_state": _Exploit(str(target))}, weights)
    with pytest.raises(ValueError, match="refusing to load it"):
        checkpoint.load_exported(folder)
    assert not target.exists(), "the planted pickle ran"


def test_a_training_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    torch.save({"epoch": 1, "payload": _Exploit(str(target))}, tmp_path / checkpoint.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        checkpoint.load_state(tmp_path)
    assert not target.exists()


# --- paths ---------------------------------------------------------------------------------------------
def test_a_symlink_leaving_a_local_store_is_refused(tmp_path: Path) -> None:
    store, outside = tmp_path / "store", tmp_path / "secret.txt"
    store.mkdir()
    outside.write_text("outside")
    (store / "inside.png").write_text("inside")
    os.symlink(outside, store / "link.png")
    os.symlink(store / "inside.png", store / "alias.png")  # inside the store: fine
    assert storage.resolve_in_store(str(store), "alias.png").endswith("alias.png")
    with pytest.raises(ValueError, match="symlinks may not leave the store"):
        storage.resolve_in_store(str(store), "link.png")


def test_a_pseudo_stores_source_obeys_the_escape_rule(tmp_path: Path) -> None:
    out = "s3://bucket/pseudo/run"
    assert resolve_source(out, source_reference("s3://bucket/stores/a", out)) == "s3://bucket/stores/a"
    external = {"base": "external", "path": "s3://other-bucket/store"}
    for reference in ({"base": "bucket", "path": "../other"}, {"base": "bucket", "path": "/etc"},
                      {"base": "parent", "path": "x"}, "s3://other-bucket/store", external,
                      {"base": "weird", "path": "x"}):
        with pytest.raises(ValueError):
            resolve_source(out, reference)  # a plain URI is no reference; an external one needs the allow
    assert resolve_source(out, external, allow_external=True) == "s3://other-bucket/store"
    local_out = str(tmp_path / "pseudo")
    assert resolve_source(local_out, {"base": "parent", "path": "store"}) == str(tmp_path / "store")
    with pytest.raises(ValueError):
        resolve_source(local_out, {"base": "parent", "path": "../../etc"})
    with pytest.raises(ValueError, match="allow-external-source"):
        resolve_source(local_out, json.loads(json.dumps(source_reference("/elsewhere/store", local_out))))
