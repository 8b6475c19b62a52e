"""The review loop against a real Label Studio server on loopback (from .venv-labelstudio, scripts/setup.sh --dev):
export -> project + local storage + tasks -> a reviewer's corrected mask, rejection and acceptance through its
API -> its JSON export -> `bpiml review import` -> one tiny epoch of training on the reviewed store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from review_fixtures import brush, choice, gt_square, make_review_store

from bpiml.data import imageio
from bpiml.model.student import StudentConfig
from bpiml.pseudolabel import reviews
from bpiml.review import export
from bpiml.review.cli import cli_review
from bpiml.runtime.loopback import free_port
from bpiml.train.config import TrainConfig
from bpiml.train.data import resize_mask

REPO = Path(__file__).resolve().parents[1]
LS_VENV = REPO / ".venv-labelstudio"
TEMPLATE = LS_VENV / "template"  # a migrated database with the test user (label-studio init, in setup.sh)
STARTUP_S = 240


def _require_label_studio() -> dict[str, str]:
    ready = (LS_VENV / ".bpiml-installed").is_file() and (TEMPLATE / "credentials.json").is_file()
    if not ready:
        why = f"Label Studio is not installed in {LS_VENV} (scripts/setup.sh --dev installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return json.loads((TEMPLATE / "credentials.json").read_text())


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """(base URL, auth headers, document root): a server on a copy of the template database."""
    creds = _require_label_studio()
    root = tmp_path_factory.mktemp("label-studio")
    data = root / "data"
    shutil.copytree(TEMPLATE, data)
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root), "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = (root / "server.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen([str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser", "--data-dir", str(data),
                             "--internal-host", "127.0.0.1", "-p", str(port), "--enable-legacy-api-token"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        while not _healthy(base):
            if proc.poll() is not None or time.monotonic() - started > STARTUP_S:
                pytest.fail(f"Label Studio did not start in {STARTUP_S} s: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        print(f"Label Studio up in {time.monotonic() - started:.1f} s")
        yield base, {"Authorization": f"Token {creds['token']}"}, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _api(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
    response = requests.request(method, url, headers=headers, timeout=60, **kwargs)
    assert response.status_code < 300, f"{method} {url}: {response.status_code} {response.text[:500]}"
    return response.json()


def test_label_studio_round_trip_then_training_sees_the_review(label_studio, ray_local) -> None:
    base, headers, root = label_studio
    store = make_review_store(root / "s", [0.9, 0.2, None, 0.5, 0.05, 0.3, 0.7])  # rec5: 0.3, left to --min-confidence
    export.export_tasks(str(store), str(root / "export"), document_root=str(root))
    project = _api("POST", f"{base}/api/projects", headers, json={
        "title": "bpiml review", "label_config": (root / "export" / "config.xml").read_text()})["id"]
    _api("POST", f"{base}/api/storages/localfiles", headers, json={
        "project": project, "path": str(store.parent / "input"), "use_blob_urls": False, "title": "images"})
    tasks = json.loads((root / "export" / "tasks.json").read_text())
    assert _api("POST", f"{base}/api/projects/{project}/import", headers, json=tasks)["task_count"] == len(tasks)
    listed = _api("GET", f"{base}/api/tasks", headers, params={"project": project, "page_size": 100})["tasks"]
    by_id = {t["data"]["bpiml_id"]: t for t in listed}
    served = requests.get(base + by_id["rec4"]["data"]["image"], headers=headers, timeout=30)
    assert served.status_code == 200 and imageio.decode_image(served.content)[0].shape[:2] == (40, 48)
    for rid, result in (("rec4", [brush(gt_square(4)), choice("accept")]), ("rec1", [choice("reject")]),
                        ("rec3", [choice("accept")])):
        _api("POST", f"{base}/api/tasks/{by_id[rid]['id']}/annotations", headers, json={"result": result})
    exported = requests.get(f"{base}/api/projects/{project}/export", headers=headers, params={"exportType": "JSON"},
                            timeout=60)
    (root / "ls-export.json").write_bytes(exported.content)
    assert cli_review(["import", "--store", str(store), "--from", str(root / "ls-export.json")]) == 0
    decisions = reviews.latest_decisions(str(store))
    assert {k: d["status"] for k, d in decisions.items()} == {"rec4": "corrected", "rec1": "rejected",
                                                               "rec3": "accepted"}
    _train_and_check(store, root, decisions)


def _train_and_check(store: Path, root: Path, decisions: dict) -> None:
    from bpiml.model import checkpoint as ckpt
    from bpiml.runtime import tracking
    from bpiml.runtime.tracking import download_model
    from bpiml.train.datasets import training_data
    from bpiml.train.job import run_training

    config = TrainConfig(store=str(store), storage_path=str(root / "runs"), run_name="reviewed", epochs=1, batch_size=2,
                         num_workers=1, cpus_per_worker=0.5, tracking_uri=f"sqlite:///{root}/mlflow.db",
                         experiment="review", register="reviewed@test", log_images=0, warmup_epochs=0,
                         model=StudentConfig(width=32, memory_slots=16, img_size=64, backbone_weights="none"),
                         aug_scale_min=1.0, aug_hflip=False, aug_color=0.0, min_confidence=0.4, confidence_weight=True)
    seen = {str(r["id"]): r for r in training_data(config).train.iter_rows()}  # the dataset the workers are given
    assert set(seen) == {"rec0", "rec2", "rec3", "rec4"}  # rec1 rejected, rec5 below 0.4, rec6 val; rec4 (0.05) reviewed
    corrected = imageio.load_mask(str(store / decisions["rec4"]["reviewed_mask"]))
    assert np.array_equal(seen["rec4"]["target"].astype(bool), resize_mask(corrected, 64))
    result = run_training(config)
    _, _, metadata, _ = ckpt.read_exported(download_model(result.registered_model_uri, result.tracking_uri,
                                                         str(root / "dl")))
    assert metadata["review"] == {"reviewed": 3, "accepted": 1, "corrected": 1, "rejected": 1, "filtered": 1}
    params = tracking.client(result.tracking_uri).get_run(result.mlflow_run_id).data.params
    assert (params["review_corrected"], params["review_rejected"], params["confidence_weight"]) == ("1", "1", "true")
    assert np.isfinite(result.history[0]["loss"])  # the confidence-weighted loss
