"""The mistakes a new user makes in the first hour each get an error that says what to do.

(A SAM variant that does not match its weights: tests/test_teachers.py::test_sam_variant_mismatch_names_checkpoint_and_variant.)
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpiml.data import inputs
from bpiml.runtime import raycluster

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_a_fresh_process(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """No cached S3 filesystem or Ray state from other tests: a new interpreter."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _no_aws_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    return {**env, "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", **extra}


def test_a_jobs_api_address_where_a_gcs_address_is_needed(monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # an earlier module may have left a Ray joined
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="Jobs API .*ray job submit.*GCS address"):
        raycluster.init_ray()


def test_a_wrong_address_says_what_the_address_should_be() -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=rf"nothing answers at RAY_ADDRESS={address}.*GCS address, host:6379"):
        raycluster.check_reachable(address, timeout_s=2)
    raycluster.check_reachable("auto")  # left to Ray


def test_missing_s3_credentials_are_named_with_the_fix(tmp_path) -> None:
    env = _no_aws_env(tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}")
    done = _in_a_fresh_process("from bpiml.data import inputs; inputs.detect('s3://bucket/store')", env)
    assert done.returncode != 0
    assert "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in done.stderr, done.stderr[-2000:]


def test_refused_s3_credentials_are_named(local_stack, tmp_path) -> None:
    creds = dict(local_stack.s3_credentials)
    env = _no_aws_env(tmp_path, AWS_ENDPOINT_URL=local_stack.s3_endpoint, AWS_ACCESS_KEY_ID=creds["AWS_ACCESS_KEY_ID"],
                      AWS_SECRET_ACCESS_KEY="not-the-secret")
    done = _in_a_fresh_process(f"from bpiml.data import inputs; inputs.detect('s3://{local_stack.mlflow_bucket}/x')", env)
    assert done.returncode != 0
    assert "the credentials are wrong" in done.stderr and "AWS_SECRET_ACCESS_KEY" in done.stderr, done.stderr[-2000:]


def test_a_store_without_a_manifest_names_the_input_forms(tmp_path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "notes.txt").write_text("no manifest here")
    with pytest.raises(FileNotFoundError, match="holds no manifest and no images; an input is a store"):
        inputs.detect(str(tmp_path / "store"))


def test_a_folder_of_images_cannot_be_pseudo_labeled_or_trained_on(tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.jpg")
    assert inputs.detect(str(tmp_path / "photos")) == "folder"
    for job in ("pseudo-labeling", "training"):
        with pytest.raises(ValueError, match=f"without boxes or masks: {job} needs a store"):
            inputs.require_boxes(str(tmp_path / "photos"), "folder", job)


def test_registration_is_explicit() -> None:
    from bpiml.train.config import TrainConfig

    assert TrainConfig().register == ""  # no flag, no registration
    with pytest.raises(ValueError, match="register must be NAME or NAME@ALIAS"):
        TrainConfig(register="bad name@").validate()
