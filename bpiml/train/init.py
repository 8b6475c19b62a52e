"""The model a training run starts from: `--init-from`, or the pretraining run of `--pretrain-store`.

    init = resolve_init("runs/synth", config.model, tracking_uri)   # on the driver, once
    loop_config["init"] = {"weights": ray.put(init.state), "record": init.record()}

The URI means what it means to every job (`bpiml.model.locate`): a run folder its best
checkpoint, a checkpoint folder or file, an exported model folder (`model.safetensors` +
`model_config.json`, local or s3://) or `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/PATH`
(MLflow). The driver loads it (torch with `weights_only=True`, or safetensors: nothing is unpickled), checks that
its architecture is the run's (`img_size` may differ) and hashes its file. The weights travel to the
workers through the object store, so no worker needs to read the path (other nodes may not see
it). Only the model's weights are taken: optimizer and schedule start fresh, and a run that resumes
from its own checkpoints ignores it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import ray
from torch import Tensor, nn

from bpiml.config import redact
from bpiml.data import cache
from bpiml.model import checkpoint as ckpt
from bpiml.model.locate import open_model
from bpiml.model.student import StudentConfig
from bpiml.runtime import tracking
from bpiml.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class InitModel:
    uri: str  # as given
    sha256: str  # of the file the weights came from
    model_config: dict[str, Any]
    state: dict[str, Tensor] = dataclasses.field(repr=False)
    stores: list[dict[str, Any]] | None = None  # what that model was trained on, when it says
    init_from: dict[str, Any] | None = None  # what that model itself started from

    def record(self) -> dict[str, Any]:
        """What the registered model's metadata and the run state say of it (credentials redacted)."""
        out: dict[str, Any] = {"uri": redact(self.uri), "sha256": self.sha256}
        if self.stores:
            out["stores"] = self.stores
        if self.init_from:
            out["init_from"] = self.init_from
        return out


def _stores_of(train_config: Any) -> list[dict[str, Any]] | None:
    """The stores a checkpoint's run trained on, from its saved config (None when it cannot be read)."""
    try:
        return [spec.record() for spec in TrainConfig.from_dict(dict(train_config)).stores()]
    except (ValueError, TypeError):  # another version's config: the stores stay unknown
        return None


def _metadata_stores(metadata: dict[str, Any]) -> list[dict[str, Any]] | None:
    """An exported model's `stores` records (None when it lists none)."""
    stores = metadata.get("stores")
    if not isinstance(stores, list) or not stores:
        return None
    return [s for s in stores if isinstance(s, dict)] or None


def _from_exported(folder: str | Path, uri: str) -> InitModel:
    state, config, metadata, weights = ckpt.read_exported(folder)
    init_from = metadata.get("init_from")
    return InitModel(uri, cache.sha256_file(weights), config, state, _metadata_stores(metadata),
                     init_from if isinstance(init_from, dict) else None)


def _from_checkpoint(path: str, uri: str) -> InitModel:
    state = ckpt.load_state(path)
    if "model_config" not in state or "model_state" not in state:
        raise ValueError(f"init_from {redact(uri)}: {path} holds no 'model_config' and 'model_state', found {sorted(state)}")
    init_from = state.get("init_from")
    return InitModel(uri, cache.sha256_file(path), dict(state["model_config"]), state["model_state"],
                     _stores_of(state.get("train_config") or {}), init_from if isinstance(init_from, dict) else None)


def load_init(uri: str, tracking_uri: str) -> InitModel:
    """The model `uri` names, loaded on this machine (see the module doc for the forms)."""
    try:
        with open_model(uri, tracking_uri) as found:
            if found.kind == "exported":
                return _from_exported(found.path, uri)
            return _from_checkpoint(found.path, uri)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init_from {redact(uri)}: {err}") from err


def resolve_init(uri: str, model: StudentConfig, tracking_uri: str) -> InitModel:
    """`load_init` + the architecture check: ValueError naming the fields that differ from the run's model."""
    init = load_init(uri, tracking_uri)
    differ = ckpt.architecture_diff(init.model_config, model.to_dict())
    if differ:
        raise ValueError(f"init_from {redact(uri)}: its architecture differs from this run's model in "
                         f"{', '.join(differ)}; pass the same --model-* flags (only img_size may differ)")
    logger.info("the student starts from %s (SHA-256 %s): weights only, optimizer and schedule fresh",
                redact(uri), init.sha256[:16])
    return init


def start_from(core: nn.Module, init: dict[str, Any], rank: int, tracking_uri: str, run_id: str) -> int:
    """Worker side: load the init weights (from the object store) into `core`; rank 0 logs the SHA-256 of the
    weights now in the model as MLflow param `init_loaded_sha256`. Returns the MLflow calls that failed."""
    core.load_state_dict(ray.get(init["weights"]))
    if rank != 0:
        return 0
    loaded = ckpt.state_fingerprint(core.state_dict())
    logger.info("started from %s (file SHA-256 %s, weights %s)", init["record"]["uri"],
                init["record"]["sha256"][:16], loaded[:16])
    try:
        tracking.log_params(tracking_uri, run_id, {"init_loaded_sha256": loaded})
    except Exception as err:  # noqa: BLE001 - counted and reported, training goes on
        logger.warning("MLflow: cannot log init_loaded_sha256 (%s: %s)", type(err).__name__, err)
        return 1
    return 0
