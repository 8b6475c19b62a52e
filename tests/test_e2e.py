"""The documented cluster path, run as written on a real multi-node cluster with a real object store.

The `local_stack` fixture is a small cluster like `cluster.yaml`'s: a Ray head without CPUs and two
worker nodes, each with a private /tmp (what a task writes to a local path there is invisible to the
head), SeaweedFS as S3 (credentials checked) and an MLflow server. The commands come from
docs/deployment.md ("Run the jobs") and deploy/kuberay-rayjob.yaml, with only the bucket, the
weights (a tiny SAM in S3), the MLflow address, the GPU counts (the test cluster has none) and the
training length and size (4 epochs at 64 px on these CPUs) changed, and are run with `ray job submit` exactly as a user would.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from stack_fixtures import s3_client

from bpiml.data import imageio, storage
from bpiml.data.manifest import Record, read_manifest, write_manifest
from bpiml.data.naming import file_stem
from bpiml.runtime.stack import LocalStack

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
DOCS_MARKER = "<!-- tested: cluster-commands"
EPOCHS = 4  # the documented commands train the paper's 20 epochs at 224 px; this cluster has 2 CPU cores


def documented_commands() -> list[list[str]]:
    """The `ray job submit` commands of docs/deployment.md's tested block, as argument lists."""
    text = (REPO / "docs" / "deployment.md").read_text()
    block = text[text.index(DOCS_MARKER):].split("```bash", 1)[1].split("```", 1)[0]
    commands = [" ".join(part.split()) for part in block.replace("\\\n", " ").split("\n") if part.strip()]
    return [shlex.split(c) for c in commands if c.startswith("ray job submit")]


def rayjob_entrypoint() -> tuple[list[list[str]], dict[str, str]]:
    spec = yaml.safe_load((REPO / "deploy" / "kuberay-rayjob.yaml").read_text())["spec"]
    steps = [shlex.split(step) for step in spec["entrypoint"].split("&&")]
    return steps, yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


def substitute(args: list[str], bucket: str, weights: str, tracking_uri: str) -> list[str]:
    """Only what differs between the docs' cluster and the test cluster."""
    out = []
    for i, arg in enumerate(args):
        arg = arg.replace("s3://my-bucket/", f"s3://{bucket}/").replace("https://mlflow.internal", tracking_uri)
        arg = arg.replace("/home/ray/bpiml/", f"{REPO}/")
        previous = args[i - 1] if i else ""
        if previous == "--checkpoint":
            arg = weights
        elif previous == "--gpus-per-worker":
            arg = "0"  # the test cluster has no GPUs
        elif previous == "--working-dir" and arg == ".":
            arg = str(REPO)
        out.append(arg)
    if any(a.endswith("jobs/train.py") for a in out):
        out += ["--epochs", str(EPOCHS), "--model-img-size", "64"]  # 2 CPU cores (the defaults: test_config)
    return out


def submit(stack: LocalStack, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if args[:3] != ["ray", "job", "submit"]:
        args = [RAY, "job", "submit", "--working-dir", str(REPO), "--", *args]
    else:
        args = [RAY, *args[1:]]
    done = subprocess.run(args, env=stack.client_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    if check:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{(done.stdout + done.stderr)[-6000:]}"
    return done


# --- the worker nodes' private scratch -------------------------------------------------------------
def _in_worker(stack: LocalStack, k: int, *command: str) -> subprocess.CompletedProcess:
    pids = subprocess.run(["pgrep", "-g", str(stack.worker_pgid(k))], capture_output=True, text=True).stdout.split()
    return subprocess.run(["nsenter", "-t", pids[0], "-m", "--", *command], capture_output=True, text=True)


def private_scratch(stack: LocalStack) -> bool:
    done = _in_worker(stack, 1, "sh", "-c", "grep -q ' /tmp tmpfs' /proc/self/mounts && echo private")
    return "private" in done.stdout


# The node's own entries of /tmp: not Ray's session, not a folder bound in from the host (a checkout or
# venv under /tmp that start_ray_worker.sh keeps visible: removing it would remove the real one).
SCRATCH_ENTRIES = ('for p in /tmp/* /tmp/.[!.]*; do [ -e "$p" ] && [ "$p" != /tmp/ray ] && ! mountpoint -q "$p" '
                   '&& echo "$p"; done')


def wipe_worker_scratch(stack: LocalStack) -> list[str]:
    """Empty each worker's /tmp but Ray's own session; returns what was there (nothing may be needed later)."""
    found = []
    for k in range(1, stack.workers + 1):
        listing = _in_worker(stack, k, "sh", "-c", SCRATCH_ENTRIES).stdout.split()
        found += [f"worker-{k}:{p}" for p in listing]
        if listing:
            _in_worker(stack, k, "rm", "-rf", "--one-file-system", *listing)
    return found


# --- the data --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_data(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from bpiml.data.sample import make_sample_store
    from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    client = s3_client(local_stack)
    client.create_bucket(Bucket=bucket)
    local = make_sample_store(str(tmp_path_factory.mktemp("store")), n_images=10, seed=1, size=128)
    records = read_manifest(local)
    for i, r in enumerate(records):  # train / val / test, as a real store has them
        r.split = ("test", "val", "train", "train", "train")[i % 5]
    for path in Path(local).rglob("*"):
        if path.is_file() and path.name != "manifest.jsonl":
            client.upload_file(str(path), bucket, f"stores/casia/{path.relative_to(local).as_posix()}")
    weights = f"s3://{bucket}/weights/tiny_sam.pth"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_endpoint_override", local_stack.s3_endpoint)
        for key, value in local_stack.s3_credentials.items():
            mp.setenv(key, value)
        write_manifest(records, f"s3://{bucket}/stores/casia")
        save_tiny_sam_checkpoint(weights)
    return {"bucket": bucket, "weights": weights}


def _keys(stack: LocalStack, bucket: str, prefix: str) -> list[str]:
    pages = s3_client(stack).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _read(stack: LocalStack, bucket: str, key: str) -> bytes:
    return s3_client(stack).get_object(Bucket=bucket, Key=key)["Body"].read()


def _records(stack: LocalStack, bucket: str, prefix: str) -> list[Record]:
    lines = [line for key in sorted(_keys(stack, bucket, prefix)) if key.endswith(".jsonl")
             for line in _read(stack, bucket, key).decode().splitlines() if line.strip()]
    return [Record.from_dict(json.loads(line)) for line in lines]


def test_a_local_out_on_the_cluster_fails_fast_naming_the_fix(local_stack: LocalStack, cluster_data) -> None:
    local_out = f"/tmp/bpiml-e2e-local-{uuid.uuid4().hex[:6]}"
    start = time.monotonic()
    done = submit(local_stack, ["python", "jobs/pseudolabel.py", "--store", f"s3://{cluster_data['bucket']}/stores/casia",
                                "--out", local_out, "--teacher", "box"], check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "is a local path" in output and "s3://" in output and "do not share it" in output, output[-3000:]
    assert time.monotonic() - start < 180
    assert not (Path(local_out) / "manifest").exists()  # nothing labeled before the check


@pytest.fixture(scope="module")
def another_ray_on_this_machine():
    """Ray Train's placement-group cleaner once printed 'Found multiple active Ray instances' with a
    traceback in every training run when another Ray ran on the machine: one runs here meanwhile."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_documented_commands_on_a_two_node_cluster(local_stack: LocalStack, cluster_data,
                                                   another_ray_on_this_machine) -> None:
    bucket, weights = cluster_data["bucket"], cluster_data["weights"]
    pseudolabel, train, predict, evaluate = [substitute(c, bucket, weights, local_stack.tracking_uri)
                                             for c in documented_commands()]
    assert private_scratch(local_stack), "the worker nodes should have a private /tmp here (root, unshare)"
    store = _records(local_stack, bucket, "stores/casia/manifest")

    out = submit(local_stack, pseudolabel).stdout
    assert "pseudo-labeling summary" in out
    labeled = _records(local_stack, bucket, "pseudo/casia-sam/manifest/")
    assert sorted(r.id for r in labeled) == sorted(r.id for r in store)  # every image once
    for r in labeled:
        mask = imageio.decode_mask(_read(local_stack, bucket, f"pseudo/casia-sam/{r.extra['pseudo_mask']}"))
        assert mask.shape == (r.extra["height"], r.extra["width"]) == (128, 128)
        assert r.extra["teacher"] == "sam"
        if r.boxes:  # teacher confidence came through the cluster: per box, and the image's = the min
            assert len(r.extra["sam_pred_iou"]) == len(r.extra["sam_stability"]) == len(r.boxes)
            assert 0 <= r.extra["confidence"] == min(c for c in r.extra["box_confidence"] if c is not None) <= 1
        else:
            assert r.extra["confidence"] is None
    wipe_worker_scratch(local_stack)  # the next step must not need anything a worker kept locally

    trained = submit(local_stack, train)
    output = trained.stdout + trained.stderr
    assert "Found multiple active Ray instances" not in output, output[-3000:]
    assert any(k.endswith("checkpoint.pt") for k in _keys(local_stack, bucket, "runs/casia-sam/"))
    from mlflow import MlflowClient

    client = MlflowClient(local_stack.tracking_uri, registry_uri=local_stack.tracking_uri)
    version = client.get_model_version_by_alias("bpiml-student", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["memory_bank_size"] == "64x96" and run.data.params["teacher"] == "sam"
    # the pretrained-backbone default, offline here: random init, said once, recorded as such
    assert run.data.params["backbone_weights_source"] == "random init (pretrained weights unavailable)"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == EPOCHS and losses[-1] < losses[0]  # every epoch logged once; the loss falls
    assert "teacher (pseudo masks): sam" in version.description  # the model card
    assert "MLmodel" in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(version.run_id, "model")}
    kept = wipe_worker_scratch(local_stack)
    caches = ("bpiml-cache", "torchinductor_")  # weights and torch's compile cache; no job output stays local
    assert all(any(c in p for c in caches) for p in kept), kept

    submit(local_stack, predict)
    tests = [r for r in store if r.split == "test"]
    predicted = sorted(_keys(local_stack, bucket, "predictions/casia/masks/"))
    assert predicted == sorted(f"predictions/casia/masks/{file_stem(r.id)}.png" for r in tests)
    for key in predicted:
        assert imageio.decode_mask(_read(local_stack, bucket, key)).shape == (128, 128)

    submit(local_stack, evaluate)
    result = json.loads(_read(local_stack, bucket, "eval/casia/results.json"))
    assert result["images"] == len(tests) and result["failed"] == 0
    casia = next(r for r in result["table"] if r["name"] == "casia")
    assert casia["pixel_f1"] is not None and 0 <= casia["pixel_f1"] <= 1


def test_the_rayjob_entrypoint_reruns_and_resumes(local_stack: LocalStack, cluster_data) -> None:
    """The RayJob runs the same two jobs: a second time they find their outputs done and finish at once."""
    if not _keys(local_stack, cluster_data["bucket"], "runs/casia-sam/"):
        pytest.skip("needs the outputs of test_documented_commands_on_a_two_node_cluster")
    steps, env_vars = rayjob_entrypoint()
    runtime_env = {"env_vars": {**env_vars, "MLFLOW_TRACKING_URI": local_stack.tracking_uri}}
    for step in steps:
        args = substitute(step, cluster_data["bucket"], cluster_data["weights"], local_stack.tracking_uri)
        out = submit(local_stack, ["ray", "job", "submit", "--working-dir", str(REPO), "--runtime-env-json",
                                   json.dumps(runtime_env), "--", *args]).stdout
        if "pseudolabel.py" in step[1]:
            assert re.search(r"labeled this run\s+0\b", out) and re.search(r"skipped \(already labeled\)\s+10\b", out)
        else:
            assert "stays registered" in out or f"epoch {EPOCHS} done" in out


def test_a_documented_command_survives_its_runtime_env(local_stack: LocalStack) -> None:
    """The docs pass MLFLOW_TRACKING_URI in --runtime-env-json and the jobs forward it too: no merge conflict."""
    done = submit(local_stack, ["ray", "job", "submit", "--working-dir", str(REPO), "--runtime-env-json",
                                json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": local_stack.tracking_uri}}), "--",
                                "python", "-c", "from bpiml.runtime.raycluster import init_ray; init_ray(); print('joined')"])
    assert "joined" in done.stdout


def test_synthesize_from_photos_in_s3_on_the_cluster(local_stack: LocalStack, cluster_data) -> None:
    """jobs/synthesize.py as a user submits it: photos in S3, the store written back to S3 by tasks on the
    worker nodes; every index once, each mask at its image's size, boxes for every forgery."""
    from bpiml.data.sample import bundled_photos

    bucket, client = cluster_data["bucket"], s3_client(local_stack)
    for name, photo in bundled_photos()[:6]:
        client.put_object(Bucket=bucket, Key=f"photos/{name}.png", Body=imageio.encode_image(photo, "png"))
    out = submit(local_stack, ["python", "jobs/synthesize.py", "--photos", f"s3://{bucket}/photos", "--out",
                               f"s3://{bucket}/synth", "--n", "12", "--part-rows", "4", "--max-side", "96",
                               "--gallery", "4"]).stdout
    records = _records(local_stack, bucket, "synth/manifest/")
    assert sorted(r.id for r in records) == [f"synth-s0-{i:09d}" for i in range(12)], out[-3000:]
    for r in records:
        image = imageio.decode_image(_read(local_stack, bucket, f"synth/{r.image}"))[0]
        mask = imageio.decode_mask(_read(local_stack, bucket, f"synth/{r.mask}"))
        assert mask.shape == image.shape[:2]
        assert bool(r.boxes) == bool(mask.any()) == (r.extra["kind"] != "authentic")
    summary = json.loads(_read(local_stack, bucket, "synth/summary.json"))
    assert summary["images"] == 12 and sum(summary["per_kind"].values()) == 12
    assert _read(local_stack, bucket, "synth/gallery.html").count(b"<img") == 4
