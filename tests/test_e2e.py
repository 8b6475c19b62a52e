"""The product path end to end: stores in S3, both jobs via `ray job submit`, MLflow server + registry.

One local S3 endpoint, one MLflow server (artifacts in that S3) and one Ray head with token auth,
all started by the `local_stack` fixture and stopped by it. SAM weights (a tiny SAM), the input
store, the pseudo masks, the training checkpoints and the predictions all live in S3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest

from bpiml.data import storage
from bpiml.data.naming import file_stem
from bpiml.runtime.stack import LOCAL_AWS_ENV, LocalStack

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
BUCKET = "e2e-data"


def _submit(stack: LocalStack, *entrypoint: str) -> str:
    args = [RAY, "job", "submit", "--working-dir", str(REPO), "--", *entrypoint]
    done = subprocess.run(args, env=stack.client_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"job {' '.join(entrypoint)} failed:\n{output[-6000:]}"
    return output


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture()
def s3(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(storage, "_endpoint_override", None)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_stack.s3_endpoint)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_stack.tracking_uri)
    for key, value in LOCAL_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=local_stack.s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


def test_pseudolabel_train_register_predict_through_ray_job_submit(local_stack: LocalStack, s3) -> None:
    from bpiml.data.manifest import read_manifest
    from bpiml.data.sample import make_sample_store
    from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

    store, pseudo = f"s3://{BUCKET}/store", f"s3://{BUCKET}/pseudo"
    make_sample_store(store, n_images=8, seed=1, size=128)
    weights = save_tiny_sam_checkpoint(f"s3://{BUCKET}/weights/tiny_sam.pth")

    out = _submit(local_stack, "python", "jobs/pseudolabel.py", "--store", store, "--out", pseudo,
                  "--teacher", "sam", "--checkpoint", weights, "--variant", "tiny", "--num-actors", "1")
    assert "pseudo-labeling summary" in out
    records = read_manifest(store)
    labeled = read_manifest(pseudo)  # the sharded manifest of the pseudo store
    assert sorted(r.id for r in labeled) == sorted(r.id for r in records)
    masks = set(_keys(s3, "pseudo/pseudo/"))
    assert masks == {f"pseudo/{r.extra['pseudo_mask']}" for r in labeled}  # every image, nothing else

    _submit(local_stack, "python", "jobs/train.py", "--store", pseudo, "--storage-path", f"s3://{BUCKET}/runs",
            "--run-name", "e2e", "--epochs", "2", "--num-workers", "2", "--cpus-per-worker", "0.5",
            "--batch-size", "4", "--model-width", "32", "--model-memory-slots", "16", "--log-images", "1",
            "--experiment", "e2e", "--register", "e2e-student@champion")
    assert _keys(s3, "runs/e2e/"), "no checkpoint written to S3"

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(local_stack.tracking_uri)
    client = MlflowClient()
    version = client.get_model_version_by_alias("e2e-student", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["memory_bank_size"] == "16x32"
    assert {"loss", "images_per_s", "val_f1", "val_iou", "slots_used", "attention_entropy"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2  # one point per epoch
    # The server keeps artifacts in S3.
    assert any(k.startswith("artifacts/") for k in _keys_all(s3, local_stack.mlflow_bucket))

    from bpiml.evaluation.inference import load_model, predict_probs

    model = load_model("models:/e2e-student@champion", local_stack.tracking_uri)
    probs = predict_probs(model, np.zeros((37, 53, 3), np.uint8))
    assert probs.shape == (37, 53)

    _submit(local_stack, "python", "jobs/predict.py", "--model", "models:/e2e-student@champion",
            "--store", store, "--out", f"s3://{BUCKET}/pred", "--num-workers", "1")
    predicted = _keys(s3, "pred/masks/")
    assert sorted(predicted) == sorted(f"pred/masks/{file_stem(r.id)}.png" for r in records)


def _keys_all(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
