"""Online serving on Ray Serve: concurrent requests batched and equal to the batch path, bad images
answered 4xx while the replica keeps serving, the health route, the bearer key; the HTTP layer and
the config without Ray."""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from bpiml.data import imageio
from bpiml.evaluation.inference import predict_batch
from bpiml.model.student import StudentConfig, build_student
from bpiml.runtime.loopback import free_port
from bpiml.serving import http
from bpiml.serving.config import ServeConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY_ENV = "BPIML_TEST_SERVE_KEY"
KEY = "k-" + "7" * 30
MAX_PIXELS = 100_000


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(StudentConfig(img_size=64, width=32, memory_slots=8)).eval()


@pytest.fixture(scope="module")
def checkpoint(student, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("serve-ckpt") / "model.pt"
    torch.save({"model_config": student.config.to_dict(), "model_state": student.state_dict(), "epoch": 1}, path)
    return str(path)


@pytest.fixture(scope="module")
def server(checkpoint):
    """Serve on a local Ray of 2 CPUs; the key reaches the replica only through its node's environment."""
    import ray
    from ray import serve

    from bpiml.serving.app import deploy

    os.environ[KEY_ENV] = KEY  # the raylet (and so the replica) inherits this process's environment
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = ServeConfig(model=checkpoint, port=free_port(), api_key_env=KEY_ENV, max_batch_size=8, gpus_per_worker=0,
                             batch_wait_timeout_s=0.05, max_image_pixels=MAX_PIXELS, blocking=False)
        yield deploy(config)
    finally:
        os.environ.pop(KEY_ENV, None)
        serve.shutdown()
        ray.shutdown()


def _post(url: str, body: bytes, key: str | None = KEY, fmt: str = "npy") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/predict", params={"format": fmt}, data=body, headers=headers, timeout=60)


def test_concurrent_requests_are_batched_and_match_the_batch_path(server, student):
    images = [_image(40 + 3 * i, 70 - 2 * i, i) for i in range(23)]
    bodies = [imageio.encode_image(im, "png") for im in images]
    bodies.insert(11, b"GIF89a but not really an image")
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda b: _post(server, b), bodies))
    bad = answers.pop(11)
    assert bad.status_code == 400 and "corrupt or truncated image" in bad.json()["error"]
    assert [a.status_code for a in answers] == [200] * 23, [a.text[:200] for a in answers if a.status_code != 200]
    expected = predict_batch(student, images, "cpu")
    for answer, want in zip(answers, expected):
        got = np.load(io.BytesIO(answer.content), allow_pickle=False).astype(np.float32)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3)
    health = requests.get(f"{server}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["device"] == "cpu"
    assert health["requests"] >= 23 and health["largest_batch"] > 1 and health["batches"] < health["requests"]


def test_each_format_and_bad_inputs_while_the_replica_keeps_serving(server, student):
    image = _image(50, 30, 99)
    probs = predict_batch(student, [image], "cpu")[0]
    answer = _post(server, imageio.encode_image(image, "png"), fmt="json")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["height"], body["width"]) == (50, 30) and abs(body["score"] - probs.max()) < 1e-4
    mask = imageio.decode_mask(base64.b64decode(body["mask_png"]))
    assert (mask != (probs > 0.5)).mean() < 0.01
    png = _post(server, imageio.encode_image(image, "png"), fmt="png")
    assert png.headers["content-type"] == "image/png" and imageio.decode_mask(png.content).shape == (50, 30)
    for body_bytes, status, reason in [(b"", 400, "empty file"), (b"\x89PNG\r\n\x1a\nbroken", 400, "corrupt"),
                                       (imageio.encode_image(_image(400, 400, 1), "png"), 413, "too many pixels")]:
        refused = _post(server, body_bytes)
        assert refused.status_code == status and reason in refused.json()["error"]
    assert _post(server, imageio.encode_image(image, "png"), fmt="tiff").status_code == 400
    assert requests.get(f"{server}/predict", timeout=30).status_code == 405
    assert requests.get(f"{server}/nothing", timeout=30).status_code == 404
    assert _post(server, imageio.encode_image(image, "jpeg")).status_code == 200  # still serving


def test_the_key_is_required_and_never_echoed(server):
    body = imageio.encode_image(_image(20, 20, 5), "png")
    for key in (None, "wrong-key"):
        refused = _post(server, body, key=key)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert KEY not in refused.text
    assert _post(server, body).status_code == 200
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200  # health needs no key
    assert KEY not in requests.get(f"{server}/healthz", timeout=30).text


# --- without Ray ---------------------------------------------------------------------------------
def test_http_layer_refusals():
    http.check_key(None, "")
    http.check_key("Bearer abc", "abc")
    for header in (None, "Basic abc", "Bearer ", "Bearer abd"):
        with pytest.raises(http.RequestError, match="401"):
            http.check_key(header, "abc")
    assert http.check_format(None) == "json" and http.check_format("NPY") == "npy"
    with pytest.raises(http.RequestError, match="format must be one of"):
        http.check_format("tiff")
    with pytest.raises(http.RequestError) as err:
        http.decode_body(b"x" * 11, 100, 10)
    assert err.value.status == 413


def test_config_from_serve_run_arguments_and_options():
    config = ServeConfig.from_strings({"model": "models:/m@a", "max_replicas": "3", "min_replicas": "0",
                                       "gpus_per_worker": "0.5", "blocking": "false"})
    options = config.deployment_options()
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 8.0}
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5} and "num_replicas" not in options
    assert config.blocking is False
    by_intent = ServeConfig(model="m", num_replicas=2).deployment_options()
    assert by_intent["num_replicas"] == 2 and by_intent["ray_actor_options"]["num_gpus"] == 1  # serving: a GPU each
    assert "num_gpus" not in ServeConfig(model="m", gpus_per_worker=0).deployment_options()["ray_actor_options"]
    with pytest.raises(ValueError, match="unknown ServeConfig key"):
        ServeConfig.from_strings({"model": "m", "replicas": "2"})
    with pytest.raises(ValueError, match="max_batch_size must be a number"):
        ServeConfig.from_strings({"model": "m", "max_batch_size": "many"})
    with pytest.raises(ValueError, match="max_replicas must be"):
        ServeConfig(model="m", min_replicas=4, max_replicas=2).validate()
    with pytest.raises(ValueError, match="model is required"):
        ServeConfig().validate()


def test_build_app_is_what_serve_run_imports(checkpoint):
    from ray.serve import Application

    from bpiml.serving.app import build_app

    assert isinstance(build_app({"model": checkpoint, "max_batch_size": "4"}), Application)
    with pytest.raises(FileNotFoundError):
        build_app({"model": checkpoint + ".missing"})


def test_a_named_key_variable_that_is_unset_stops_the_replica(monkeypatch):
    from bpiml.serving.app import read_api_key

    monkeypatch.delenv("BPIML_TEST_NO_KEY", raising=False)
    with pytest.raises(ValueError, match="BPIML_TEST_NO_KEY: the variable is not set"):
        read_api_key("BPIML_TEST_NO_KEY")
    monkeypatch.setenv("BPIML_TEST_NO_KEY", "abc")
    assert read_api_key("BPIML_TEST_NO_KEY") == "abc" and read_api_key("") == ""
