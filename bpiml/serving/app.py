"""Online prediction on Ray Serve: a registered model behind an HTTP API, batched across requests.

    serve run bpiml.serving.app:build_app model=models:/bpiml-student@champion max_batch_size=16
    python jobs/serve.py --model models:/bpiml-student@champion --num-replicas 2
    ray job submit -- python jobs/serve.py --model models:/bpiml-student@champion --no-blocking

Each replica (`Segmenter`) loads the model once (`bpiml.evaluation.inference.load_model`), decodes
each request's image on its own (a bad one is answered 4xx and never reaches a batch), and runs the
images of concurrent requests through one `predict_batch` call (`@serve.batch`). A replica that asked
for GPUs runs on the GPU Ray assigned it. The routes and answers: `bpiml.serving.http`.

Ray Serve's HTTP proxy has no authentication: with `api_key_env=VAR` the replica reads the key from
its own node's environment (never from the runtime_env, which the dashboard shows) and /predict
requires `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from bpiml.data import storage
from bpiml.evaluation.inference import check_model, load_model, predict_batch
from bpiml.runtime.raycluster import init_ray
from bpiml.runtime.resources import torch_device, wait_for_resources
from bpiml.serving import http
from bpiml.serving.config import ServeConfig

logger = logging.getLogger(__name__)


def read_api_key(env_name: str) -> str:
    """The bearer key from this process's environment; a named variable that is unset is an error."""
    if not env_name:
        return ""
    key = os.environ.get(env_name, "")
    if not key:
        raise ValueError(f"api_key_env={env_name}: the variable is not set (or empty) in the environment of "
                         "the replica's node; set it where the Ray node starts, never in a runtime_env")
    return key


@serve.deployment(name="Segmenter")
class Segmenter:
    """One replica: the model loaded once; POST /predict, GET /healthz (see `bpiml.serving.http`)."""

    def __init__(self, config: dict[str, Any], tracking_uri: str = "") -> None:
        self.config = ServeConfig.from_dict(config)
        self.key = read_api_key(self.config.api_key_env)
        self.device = torch_device(self.config.gpu_decision().gpus_per_worker)  # from the GPUs Ray gave it
        self.model = load_model(self.config.model, tracking_uri or self.config.tracking_uri).to(self.device)
        self.predict_images.set_max_batch_size(self.config.max_batch_size)
        self.predict_images.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}  # shown by /healthz
        logger.info("replica ready: %s on %s (batches of <= %d)", self.config.model, self.device,
                    self.config.max_batch_size)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The images of concurrent requests in one forward pass (off the event loop)."""
        self.stats["batches"] += 1
        self.stats["requests"] += len(images)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(images))
        return await asyncio.to_thread(predict_batch, self.model, images, self.device)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        try:
            if path.endswith("/healthz"):
                return self._json({"status": "ok", "model": self.config.model, "device": self.device, **self.stats})
            if not path.endswith("/predict"):
                raise http.RequestError(404, f"no route {request.url.path}: POST /predict or GET /healthz")
            if request.method != "POST":
                raise http.RequestError(405, f"/predict takes POST with the image as body, got {request.method}")
            http.check_key(request.headers.get("authorization"), self.key)
            fmt = http.check_format(request.query_params.get("format"))
            return await self._predict(request, fmt)
        except http.RequestError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            return Response(http.error_body(err.reason), status_code=err.status, media_type="application/json",
                            headers=headers)

    async def _predict(self, request: Request, fmt: str) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_request_bytes:
            raise http.RequestError(413, f"request body is {length} bytes, more than the "
                                         f"{self.config.max_request_bytes} allowed")
        body = await request.body()
        image = await asyncio.to_thread(http.decode_body, body, self.config.max_image_pixels,
                                        self.config.max_request_bytes)
        probs = await self.predict_images(image)
        answer = await asyncio.to_thread(http.encode_answer, probs, fmt, self.config.threshold)
        return Response(answer, media_type=http.MEDIA_TYPES[fmt])

    @staticmethod
    def _json(value: dict[str, Any]) -> Response:
        return Response(json.dumps(value).encode(), media_type="application/json")


def build(config: ServeConfig) -> Application:
    """The application for `serve.run`: a checked model, the deployment with the config's options."""
    config.validate()
    tracking_uri = check_model(config.model, config.tracking_uri)  # fail before any replica starts
    config = config.replace(gpus_per_worker=config.gpu_decision().gpus_per_worker)
    return Segmenter.options(**config.deployment_options()).bind(config.to_dict(), tracking_uri)


def build_app(args: dict[str, str]) -> Application:
    """Application builder for `serve run bpiml.serving.app:build_app model=... key=value ...`."""
    return build(ServeConfig.from_strings(dict(args)))


def deploy(config: ServeConfig) -> str:
    """Start Serve's HTTP proxy (host, port) when it is not running, deploy the application, return its URL."""
    app = build(config)
    replicas = max(config.min_replicas if config.max_replicas else config.num_replicas, 1)
    decision = config.gpu_decision()
    logger.info("replicas: %s", decision)
    wait_for_resources(config.cpus_per_worker * replicas, decision.gpus_per_worker * replicas, config.resource_wait_s,
                       "serve")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app, name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
    logger.info("serving %s at %s/predict (health: %s/healthz)%s", config.model, url, url,
                ", bearer key required" if config.api_key_env else "")
    return url


def run_serve(config: ServeConfig) -> dict[str, Any]:
    """Join or start Ray, deploy, then either return (`blocking=False`) or serve until interrupted."""
    config.validate()
    if config.s3_endpoint:
        storage.set_s3_endpoint(config.s3_endpoint)  # before Ray starts: the replicas get it through worker_env()
    init_ray()
    url = deploy(config)
    summary = {"app": config.app_name, "url": url, "predict": f"{url}/predict", "healthz": f"{url}/healthz",
               **config.gpu_decision().record()}
    if not config.blocking:
        if not os.environ.get("RAY_ADDRESS"):
            logger.warning("--no-blocking on a Ray started by this process: the application ends with it")
        return summary
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        if os.environ.get("RAY_ADDRESS"):  # a cluster outlives this driver: take the application down
            logger.info("interrupted: deleting application %s", config.app_name)
            serve.delete(config.app_name)
    return summary  # a Ray this process started ends with it
