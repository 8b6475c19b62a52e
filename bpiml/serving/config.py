"""How a model is served on Ray Serve: replicas, batching, resources, the HTTP proxy, the API key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bpiml.config import (
    BaseConfig,
    check_job_resources,
    check_range,
    cpus_field,
    field,
    field_type,
    gpus_field,
    require,
    resource_wait_field,
    s3_endpoint_field,
)
from bpiml.data.imageio import MAX_PIXELS
from bpiml.runtime.resources import GpuDecision, decide_gpus


@dataclass
class ServeConfig(BaseConfig):
    model: str = field("", help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/<path>, or a checkpoint path/URI")
    tracking_uri: str = field("", help="MLflow tracking URI for models:/ and runs:/ (default: env, then project sqlite)")
    app_name: str = field("bpiml", help="Serve application name (a second deploy under the same name replaces it)")
    route_prefix: str = field("/", help="HTTP path the application answers under (/predict, /healthz below it)")
    host: str = field("127.0.0.1", help="address of Serve's HTTP proxy (0.0.0.0 to listen on every interface)")
    port: int = field(8000, help="port of Serve's HTTP proxy")
    num_replicas: int = field(1, help="fixed number of replicas (ignored when --max-replicas > 0 turns on autoscaling)")
    min_replicas: int = field(1, help="autoscaling: fewest replicas (0 scales to zero when idle)")
    max_replicas: int = field(0, help="autoscaling: most replicas; 0 = no autoscaling, --num-replicas replicas")
    target_ongoing_requests: float = field(8.0, help="autoscaling: requests in flight per replica it aims at")
    max_ongoing_requests: int = field(32, help="requests one replica takes at once (>= --max-batch-size, or batches stay small)")
    max_batch_size: int = field(8, help="images per model call (dynamic batching, @serve.batch)")
    batch_wait_timeout_s: float = field(0.01, help="how long a batch waits to fill before it runs")
    cpus_per_worker: float = cpus_field(1.0, "replica (fractional allowed)")
    gpus_per_worker: float | None = gpus_field("replica (> 0 runs the model on the GPU Ray assigns it)")
    resource_wait_s: float = resource_wait_field()
    s3_endpoint: str | None = s3_endpoint_field()
    threshold: float = field(0.5, help="probability threshold for the returned mask")
    max_image_pixels: int = field(40_000_000, help="refuse images with more pixels (HTTP 413)")
    max_request_bytes: int = field(50_000_000, help="refuse request bodies larger than this (HTTP 413)")
    api_key_env: str = field("", help="name of an environment variable of the replicas' nodes holding the bearer key "
                                      "that /predict requires; empty = no key (Serve's proxy has no auth of its own)")
    blocking: bool = field(True, help="keep running until interrupted; --no-blocking deploys and returns (the "
                                      "application stays on a long-running cluster, e.g. under `ray job submit`)")

    def validate(self) -> None:
        require(self, "model")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        check_range("port", self.port, 1, 65535)
        check_range("num_replicas", self.num_replicas, 1)
        check_range("min_replicas", self.min_replicas, 0)
        check_range("max_replicas", self.max_replicas, 0)
        if self.max_replicas and self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(f"max_replicas must be >= max(min_replicas, 1) = {max(self.min_replicas, 1)}, "
                             f"got {self.max_replicas}")
        check_range("target_ongoing_requests", self.target_ongoing_requests, 0.01)
        check_range("max_batch_size", self.max_batch_size, 1)
        check_range("max_ongoing_requests", self.max_ongoing_requests, 1)
        check_range("batch_wait_timeout_s", self.batch_wait_timeout_s, 0.0)
        check_job_resources(self, min_cpus=0.0)
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("max_image_pixels", self.max_image_pixels, 1, MAX_PIXELS)
        check_range("max_request_bytes", self.max_request_bytes, 1)
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(f"api_key_env must be an environment variable name, got {self.api_key_env!r}")

    @classmethod
    def from_strings(cls, values: dict[str, Any]) -> ServeConfig:
        """The config of `serve run module:build_app key=value ...` (strings) or of a Serve config file's
        `args` (YAML values): numbers and booleans parsed by each field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        typed: dict[str, Any] = {}
        for key, value in values.items():
            kind = field_type(cls, key) if key in fields else str
            parse = fields[key].metadata.get("parse") if key in fields else None
            if parse is not None and isinstance(value, str):
                try:
                    typed[key] = parse(value)
                except Exception as err:  # noqa: BLE001 - argparse.ArgumentTypeError, ValueError
                    raise ValueError(f"{key}: {err}") from None
            elif kind is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
                typed[key] = value.lower() in ("1", "true", "yes")
            elif kind in (int, float):
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{key} must be a number ({kind.__name__}), got {value!r}") from None
                if kind is int and not number.is_integer():
                    raise ValueError(f"{key} must be a whole number, got {value!r}")
                typed[key] = kind(number)
            else:
                typed[key] = value
        return cls.from_dict(typed)

    def gpu_decision(self) -> GpuDecision:
        """GPUs per replica by intent: 1. Online answers to concurrent requests are GPU work (the batch of a
        busy replica); `gpus_per_worker=0` serves from CPUs."""
        return decide_gpus(self.gpus_per_worker, 1, "serving runs each replica on a GPU (latency under load)")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `Deployment.options`: replicas or autoscaling, resources (GPUs by
        `gpu_decision`), concurrency."""
        actor: dict[str, Any] = {"num_cpus": self.cpus_per_worker}
        gpus = self.gpu_decision().gpus_per_worker
        if gpus:
            actor["num_gpus"] = gpus
        options: dict[str, Any] = {"ray_actor_options": actor,
                                   "max_ongoing_requests": max(self.max_ongoing_requests, self.max_batch_size)}
        if self.max_replicas:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.num_replicas
        return options
