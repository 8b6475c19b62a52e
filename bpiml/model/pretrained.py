"""Backbone weights by name: the ImageNet-pretrained weights timm publishes for the backbone.

The student's `backbone_weights` (`--model-backbone-weights`):

    auto       (default) the pretrained weights when they can be had; offline, random init with one
               loud warning that names the flag
    imagenet   the pretrained weights, or fail
    none       random init
    PATH/URI   a state dict, local or s3:// (torch, loaded with weights_only=True, or safetensors)

Where they come from: timm's registry names the model's Hugging Face Hub repo
(`pretrained_cfg.hf_hub_id`, for `tiny_vit_5m_224` `timm/tiny_vit_5m_224.dist_in22k`), whose
`model.safetensors` is fetched by `huggingface_hub` into its cache (`HF_HUB_CACHE`, else
`$HF_HOME/hub`, default `~/.cache/huggingface/hub`) from `$BPIML_HF_BASE_URL` (else `$HF_ENDPOINT`, a
mirror; else https://huggingface.co), with `HF_TOKEN` when set, retried and resumed by the hub
client, with its progress bar. In order: the hub cache; the cluster cache `BPIML_WEIGHTS_CACHE` when
set (copied to the node cache, `bpiml.data.cache.fetch_once`); offline (`HF_HUB_OFFLINE=1` or
`BPIML_OFFLINE=1`) an error at once; else the hub (then uploaded to the cluster cache). Safetensors
hold tensors only: nothing is unpickled. timm knows no checksum for hub files, so the SHA-256 of
what was fetched is recorded instead: an MLflow param of the training run and part of the
registered model's metadata.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm

from bpiml.data import cache, download, storage

logger = logging.getLogger(__name__)

AUTO, IMAGENET, NONE = "auto", "imagenet", "none"
BASE_URL_ENV = "BPIML_HF_BASE_URL"
DEFAULT_BASE_URL = "https://huggingface.co"
HUB_FILE = "model.safetensors"
_unavailable: dict[str, str] = {}  # url -> why, so one process warns (and tries) once


@dataclass(frozen=True)
class Resolved:
    """What a `backbone_weights` value means here: the file to load (None: random init), where it
    came from and its SHA-256 (None where nothing was fetched)."""

    path: str | None
    source: str
    sha256: str | None


def hub_repo(backbone: str) -> str:
    cfg = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise ValueError(f"timm publishes no pretrained weights on the hub for {backbone!r}; "
                         "pass --model-backbone-weights PATH (a state dict) or none")
    return repo


def _endpoint() -> str:
    return (os.environ.get(BASE_URL_ENV) or os.environ.get("HF_ENDPOINT") or DEFAULT_BASE_URL).rstrip("/")


def hub_url(backbone: str) -> str:
    return f"{_endpoint()}/{hub_repo(backbone)}/resolve/main/{HUB_FILE}"


def _hub_download(repo: str, local_only: bool) -> Path:
    """The file from the hub client's cache (`local_only`) or the hub; huggingface_hub's errors as FetchError."""
    # imported on use: most commands never fetch a backbone
    from huggingface_hub import hf_hub_download

    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at huggingface_hub's import
    try:
        return Path(hf_hub_download(repo, HUB_FILE, endpoint=_endpoint(), cache_dir=cache_dir,
                                    local_files_only=local_only, etag_timeout=30))
    except Exception as err:  # HTTP, connection, missing entry, auth: all mean "not had"
        cause = err.__cause__ or err.__context__
        why = f"{type(err).__name__}: {err}" + (f" (caused by {type(cause).__name__}: {cause})" if cause else "")
        raise cache.FetchError(f"{_endpoint()}/{repo}/resolve/main/{HUB_FILE}: {why[:600]}") from err


def fetch(backbone: str) -> Path:
    """The pretrained weights of `backbone` on this node (see the module doc); raises cache.FetchError."""
    repo = hub_repo(backbone)
    url = hub_url(backbone)
    if url in _unavailable:
        raise cache.FetchError(_unavailable[url])
    try:
        return _hub_download(repo, local_only=True)
    except cache.FetchError:
        pass
    shared = os.environ.get("BPIML_WEIGHTS_CACHE")
    shared_uri = storage.join(shared, "backbones", repo, HUB_FILE) if shared else None
    try:
        if shared_uri and storage.exists(shared_uri):
            return cache.fetch_once(cache.cache_dir() / "backbones" / repo / HUB_FILE, url, shared_uri=shared_uri)
        if download.offline():
            raise download.offline_error(f"{repo}/{HUB_FILE}", f"the Hugging Face cache "
                                         f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})")
        path = _hub_download(repo, local_only=False)
    except cache.FetchError as err:
        _unavailable[url] = str(err)
        raise
    if shared_uri:
        cache.copy_to_remote(path, shared_uri)
    return path


def resolve(spec: str | None, backbone: str) -> Resolved:
    """The weights `spec` names for `backbone` (see the module doc)."""
    if spec is None or spec == NONE:
        return Resolved(None, "random init", None)
    if spec not in (AUTO, IMAGENET):
        return Resolved(spec, spec, None)
    try:
        path = fetch(backbone)
    except (cache.FetchError, ValueError) as err:
        if spec == IMAGENET:
            raise cache.FetchError(f"backbone weights 'imagenet' for {backbone} could not be had: {err}") from err
        _warn_random_init(backbone, err)
        return Resolved(None, "random init (pretrained weights unavailable)", None)
    return Resolved(str(path), hub_url(backbone), cache.sha256_file(path))


_warned: set[str] = set()


def _warn_random_init(backbone: str, err: Exception) -> None:
    if backbone in _warned:
        return
    _warned.add(backbone)
    logger.warning("=" * 78)
    logger.warning("NO PRETRAINED BACKBONE: %s starts from random weights (%s).", backbone, err)
    logger.warning("The paper's student is ImageNet-pretrained; without it expect far lower F1. Give a state "
                   "dict with --model-backbone-weights PATH|s3://..., set %s to a mirror, or pass "
                   "--model-backbone-weights none to train from scratch on purpose (and silence this).",
                   BASE_URL_ENV)
    logger.warning("=" * 78)
