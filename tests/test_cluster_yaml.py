"""cluster.yaml against Ray's cluster-launcher schema, and the KubeRay RayJob manifest; no cloud access."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())


def test_cluster_yaml_passes_ray_schema(cluster: dict) -> None:
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(cluster))
    # What `ray up` checks after merging the AWS defaults (before any AWS call).
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_rejects_a_broken_config(cluster: dict) -> None:
    pytest.importorskip("jsonschema")
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["ray.worker.g5.xlarge"]["min_wokers"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cpu_head_and_autoscaling_gpu_workers(cluster: dict) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    assert {t["node_config"]["InstanceType"] for t in workers.values()} == {"g5.xlarge", "g5.2xlarge"}
    for t in workers.values():
        assert t["min_workers"] == 0 < t["max_workers"] <= cluster["max_workers"]
        assert t["resources"]["GPU"] == 1


def test_images_match_installed_ray(cluster: dict) -> None:
    docker = cluster["docker"]
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-{PY_TAG}-cpu"
    assert docker["worker_image"] == f"rayproject/ray:{ray.__version__}-{PY_TAG}-gpu"
    images = [v for k, v in docker.items() if k.endswith("image")]
    assert images and not any("ray-ml" in image for image in images)


def test_token_auth_on_every_node_without_a_token_in_the_file(cluster: dict) -> None:
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"\b[0-9a-f]{32,}\b", text), "a literal token in cluster.yaml"
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start
    assert cluster["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-port=8265" in " ".join(cluster["head_start_ray_commands"])


def test_setup_installs_this_package(cluster: dict) -> None:
    assert cluster["file_mounts"]["/home/ray/bpiml"] == "."
    assert any("pip install" in c and "/home/ray/bpiml" in c for c in cluster["setup_commands"])
    assert "**/.venv" in cluster["rsync_exclude"]


def test_rayjob_manifest_runs_both_jobs(rayjob: dict) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert "jobs/pseudolabel.py" in spec["entrypoint"] and "jobs/train.py" in spec["entrypoint"]
    assert spec["entrypoint"].index("pseudolabel.py") < spec["entrypoint"].index("train.py")
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["authOptions"] == {"mode": "token"}
    worker = cluster_spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert not any(k.startswith("AWS_SECRET") or "TOKEN" in k for k in env)


def _flags(command: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", command))


@pytest.mark.parametrize("job", ["pseudolabel", "train"])
def test_rayjob_flags_exist_in_the_jobs(rayjob: dict, job: str) -> None:
    script = ROOT / "jobs" / f"{job}.py"  # a missing script fails the run below, never skips it
    part = [p for p in rayjob["spec"]["entrypoint"].split("&&") if f"jobs/{job}.py" in p][0]
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    missing = sorted(f for f in _flags(part) if f not in done.stdout)
    assert missing == [], f"jobs/{job}.py --help lacks {missing}"


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())


def test_rayservice_deploys_the_serving_app_with_valid_args(rayservice: dict) -> None:
    from bpiml.serving import app as serving_app
    from bpiml.serving.config import ServeConfig

    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    application = serve_config["applications"][0]
    module, _, name = application["import_path"].partition(":")
    assert module == serving_app.__name__ and callable(getattr(serving_app, name))
    config = ServeConfig.from_strings(application["args"])  # the builder's own parsing and checks
    assert config.gpus_per_worker == 1 and config.max_replicas > config.min_replicas >= 1
    assert config.max_ongoing_requests >= config.max_batch_size
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["authOptions"] == {"mode": "token"}
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayservice_secrets_come_from_a_secret_never_the_runtime_env(rayservice: dict) -> None:
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    application = serve_config["applications"][0]
    env_vars = application["runtime_env"]["env_vars"]
    key_env = application["args"]["api_key_env"]
    assert key_env not in env_vars and not any("PASSWORD" in k or "KEY" in k or "TOKEN" in k for k in env_vars)
    cluster = rayservice["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for name in (key_env, "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name], (container["name"], name)
    assert not re.search(r"\b[0-9a-f]{32,}\b", (ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())


def test_every_worker_type_has_the_instance_profile_of_the_minimal_policy(cluster: dict) -> None:
    """Workers read and write s3://: each worker type names the profile whose role holds
    deploy/iam/bpiml-s3-policy.json (least privilege: one bucket, the object actions the jobs use)."""
    import json

    workers = {n: t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]}
    assert {n: t["node_config"].get("IamInstanceProfile") for n, t in workers.items()} == {
        n: {"Name": "bpiml-worker"} for n in workers}
    policy = json.loads((ROOT / "deploy" / "iam" / "bpiml-s3-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                       "s3:AbortMultipartUpload"}
    assert all(s["Effect"] == "Allow" and "*" not in "".join(s["Resource"]).replace("/*", "") for s in
               policy["Statement"])  # no wildcard bucket, no s3:*
    passrole = json.loads((ROOT / "deploy" / "iam" / "head-pass-worker-role.json").read_text())
    assert passrole["Statement"][0]["Resource"].endswith(":role/bpiml-worker")
