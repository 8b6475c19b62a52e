"""The pretrained backbone by name, for real, against a loopback server standing in for the hub:
`auto` loads the published weights where they can be had and falls back to random init with one
warning offline, `imagenet` fails instead, `none` never asks; the training driver decides once and
records the weights' source and SHA-256."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from loopback_http import FileServer
from safetensors.torch import save_file

from bpiml.data import cache
from bpiml.model import pretrained
from bpiml.model.backbone import Backbone
from bpiml.train.config import TrainConfig
from bpiml.train.job import resolve_backbone_weights

NAME = "tiny_vit_5m_224"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """What the hub would publish: the full classifier's state dict (head included) as safetensors."""
    torch.manual_seed(123)
    state = {k: v.contiguous() for k, v in timm.create_model(NAME, pretrained=False).state_dict().items()}
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    save_file(state, str(path))
    return path.read_bytes(), state


@pytest.fixture()
def hub(published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    repo = timm.models.get_pretrained_cfg(NAME).hf_hub_id
    server = FileServer({f"/{repo}/resolve/main/model.safetensors": published[0]})
    monkeypatch.setenv(pretrained.BASE_URL_ENV, server.url)
    monkeypatch.setenv("BPIML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    for name in ("BPIML_OFFLINE", "HF_HUB_OFFLINE", "BPIML_WEIGHTS_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pretrained, "_unavailable", {})
    monkeypatch.setattr(pretrained, "_warned", set())
    yield server
    server.close()


def test_auto_loads_the_published_weights_once_per_node(hub: FileServer, published) -> None:
    first, second = Backbone(NAME), Backbone(NAME, pretrained.IMAGENET)
    key = "stages.1.blocks.0.attn.qkv.weight"
    assert torch.equal(first.model.state_dict()[key], published[1][key])
    assert torch.equal(second.model.state_dict()[key], published[1][key])
    assert sum(hub.gets.values()) == 1  # the second build found it in the node cache
    assert first.weights_source == pretrained.hub_url(NAME) and first.weights_source.startswith(hub.url)
    assert first.weights_sha256 == hashlib.sha256(published[0]).hexdigest()


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "BPIML_OFFLINE"])
def test_offline_auto_warns_once_and_starts_random(hub: FileServer, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv(env, "1")
    with caplog.at_level(logging.WARNING, logger="bpiml.model.pretrained"):
        a, _ = Backbone(NAME), Backbone(NAME)
    warnings = [r for r in caplog.records if "NO PRETRAINED BACKBONE" in r.getMessage()]
    assert len(warnings) == 1 and "--model-backbone-weights" in caplog.text
    assert "offline" in caplog.text and "is not cached" in caplog.text
    assert a.weights_source.startswith("random init") and a.weights_sha256 is None
    assert not hub.requests  # offline: not one connection
    assert not list((Path(cache.cache_dir()) / "backbones").rglob("*.safetensors"))  # nothing partial kept


def test_explicit_imagenet_fails_when_unavailable_and_none_never_asks(hub: FileServer) -> None:
    del hub.files[next(iter(hub.files))]  # a hub without the file: 404 (not retried, unlike a 5xx)
    with pytest.raises(cache.FetchError, match="404"):
        Backbone(NAME, pretrained.IMAGENET)
    hub.requests.clear()
    assert Backbone(NAME, pretrained.NONE).weights_source == "random init" and not hub.requests
    assert Backbone(NAME, None).weights_source == "random init" and not hub.requests


def test_the_hub_client_resumes_a_dropped_download_sends_the_token_and_serves_offline(
        hub: FileServer, published, monkeypatch: pytest.MonkeyPatch) -> None:
    path = next(iter(hub.files))
    hub.drop_at = len(published[0]) // 2
    monkeypatch.setenv("HF_TOKEN", "hf_loopbacktoken")
    tokens: list[str | None] = []
    monkeypatch.setattr(hub, "on_request", lambda headers: tokens.append(headers.get("Authorization")), raising=False)
    fetched = pretrained.fetch(NAME)
    assert fetched.read_bytes() == published[0]  # byte-identical after the drop
    first, resumed = hub.ranged(path)  # huggingface_hub resumed with Range from what it had written
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= len(published[0]) // 2
    assert tokens and set(tokens) == {"Bearer hf_loopbacktoken"}  # HF_TOKEN honoured
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_unavailable", {})
    hub.requests.clear()
    assert pretrained.fetch(NAME) == fetched and not hub.requests  # offline: from the hub cache, no connection


def test_a_state_dict_file_keeps_working(tmp_path: Path, published) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(published[0])
    backbone = Backbone(NAME, str(path))
    key = next(k for k in published[1] if k.startswith("stages.0"))
    assert torch.equal(backbone.model.state_dict()[key], published[1][key])


@pytest.mark.parametrize("up, expected", [(True, pretrained.IMAGENET), (False, pretrained.NONE)])
def test_the_training_driver_decides_once_and_records_the_source(hub: FileServer, published, up: bool,
                                                                 expected: str) -> None:
    if not up:
        hub.files.clear()  # a 404 (a 5xx is retried by huggingface_hub for ~20 s first)
    config, recorded = resolve_backbone_weights(TrainConfig())
    assert config.model.backbone_weights == expected  # what every worker gets: no worker decides on its own
    if up:
        assert recorded == {"source": pretrained.hub_url(NAME), "sha256": hashlib.sha256(published[0]).hexdigest()}
    else:
        assert recorded == {"source": "random init (pretrained weights unavailable)", "sha256": None}
