"""GPUs by intent (`bpiml.runtime.resources`): the decision, the wait (a scripted cluster, no Ray) and the
torch device rule. The wait on a real cluster whose GPU node joins later: tests/test_gpu_wait.py."""

from __future__ import annotations

import logging

import pytest

from bpiml.runtime import resources
from bpiml.runtime.resources import decide_gpus, torch_device, wait_for_resources


# --- the decision -----------------------------------------------------------------------------
@pytest.mark.parametrize("asked, intent_gpus, gpus, reason", [
    (None, 1, 1.0, "the sam vit_h teacher runs on GPU (by intent; --gpus-per-worker sets it)"),
    (None, 0, 0.0, "the box teacher has no model (by intent; --gpus-per-worker sets it)"),
    (0, 1, 0.0, "asked with --gpus-per-worker 0; by intent 1:"),
    (0.5, 1, 0.5, "asked with --gpus-per-worker 0.5; by intent 1:"),
    (1, 1, 1.0, "asked with --gpus-per-worker 1"),
    (2, 0, 2.0, "asked with --gpus-per-worker 2; by intent 0:"),
])
def test_decision_table(asked, intent_gpus, gpus, reason) -> None:
    intent = "the sam vit_h teacher runs on GPU" if intent_gpus else "the box teacher has no model"
    decision = decide_gpus(asked, intent_gpus, intent)
    assert decision.gpus_per_worker == gpus and decision.reason.startswith(reason)
    assert str(decision).startswith(f"gpus_per_worker={gpus:g}: ")
    assert decision.record() == {"gpus_per_worker": gpus, "gpu_decision": str(decision)}


def test_asked_equal_to_intent_says_only_that_it_was_asked() -> None:
    assert str(decide_gpus(1, 1, "x")) == "gpus_per_worker=1: asked with --gpus-per-worker 1"
    assert str(decide_gpus(0, 0, "x")) == "gpus_per_worker=0: asked with --gpus-per-worker 0"


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_a_negative_or_odd_count_names_the_flag(bad) -> None:
    with pytest.raises(ValueError, match="--gpus-per-worker must be >= 0"):
        decide_gpus(bad, 1, "x")


# --- the wait, against a scripted cluster ---------------------------------------------------
class Cluster:
    """`ray.cluster_resources()` as a script: the offer changes after some polls; requests recorded."""

    def __init__(self, offers: list[tuple[float, float]], most: dict | None = None) -> None:
        self.offers, self.most, self.requests, self.polls = offers, most, [], 0

    def offered(self) -> tuple[float, float]:
        self.polls += 1
        return self.offers[min(self.polls - 1, len(self.offers) - 1)]

    def install(self, monkeypatch: pytest.MonkeyPatch, joined: bool = True) -> Cluster:
        """Joined (RAY_ADDRESS set, as under `ray job submit`): nodes may still join; else a Ray of our own."""
        if joined:
            monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setattr(resources, "_offered", self.offered)
        monkeypatch.setattr(resources, "_max_resources", lambda: self.most)
        monkeypatch.setattr(resources, "_request", lambda cpus, gpus: self.requests.append((cpus, gpus)))
        return self


def test_enough_at_once_asks_nothing(monkeypatch) -> None:
    cluster = Cluster([(4, 1)]).install(monkeypatch)
    assert wait_for_resources(2, 1, 10, "job") == 0.0
    assert cluster.requests == []


def test_waits_until_a_gpu_node_joins_then_withdraws_the_request(monkeypatch, caplog) -> None:
    cluster = Cluster([(2, 0), (2, 0), (2, 0), (6, 1)]).install(monkeypatch)
    with caplog.at_level(logging.INFO, logger="bpiml.runtime.resources"):
        wait_for_resources(4, 1, 30, "pseudo-labeling", poll_s=0.01, note_s=0.0)
    assert cluster.requests == [(4, 1), (0, 0)]  # asked, then the standing request withdrawn
    lines = [r.getMessage() for r in caplog.records]
    assert "pseudo-labeling: waiting for the cluster to offer 1 GPUs (offered: 0) and 4 CPUs (offered: 2)" in lines[0]
    assert "s left (--resource-wait-s 30)" in lines[0]
    assert "offers 6 CPUs and 1 GPUs now" in lines[-1]


def test_times_out_naming_the_fix(monkeypatch) -> None:
    cluster = Cluster([(4, 0)]).install(monkeypatch)
    with pytest.raises(ValueError) as err:
        wait_for_resources(2, 2, 0.05, "training", poll_s=0.01)
    message = str(err.value)
    assert "training waited 0.05 s (--resource-wait-s) for 2 GPUs (offered: 0)" in message
    assert "--gpus-per-worker 0 to run on CPU" in message and "a larger --resource-wait-s" in message
    assert "check the GPU worker group" in message and "CPUs (offered" not in message
    assert cluster.requests[-1] == (0, 0)


def test_short_of_cpus_only_names_the_cpu_flags(monkeypatch) -> None:
    Cluster([(1, 0)]).install(monkeypatch)
    with pytest.raises(ValueError) as err:
        wait_for_resources(3, 0, 0.02, "predict", poll_s=0.01)
    assert "--cpus-per-worker" in str(err.value) and "--gpus-per-worker" not in str(err.value)


def test_a_ray_started_here_fails_at_once(monkeypatch) -> None:
    cluster = Cluster([(2, 0)]).install(monkeypatch, joined=False)
    with pytest.raises(ValueError, match="started by the job itself.*--gpus-per-worker 0 to run on CPU"):
        wait_for_resources(1, 1, 600, "serve")
    assert cluster.requests == [] and cluster.polls == 1
    with pytest.raises(ValueError, match="started by the job itself"):  # or when told so
        Cluster([(2, 0)]).install(monkeypatch, joined=True)
        wait_for_resources(1, 1, 600, "serve", can_grow=False)


def test_an_autoscaler_that_cannot_reach_the_count_fails_at_once(monkeypatch) -> None:
    Cluster([(0, 0)], most={"CPU": 24, "GPU": 6}).install(monkeypatch)
    with pytest.raises(ValueError, match="can grow to 24 CPUs and 6 GPUs at most.*check the GPU worker group"):
        wait_for_resources(8, 8, 600, "pseudo-labeling")


def test_an_autoscaler_that_can_grow_is_asked_and_waited_for(monkeypatch) -> None:
    cluster = Cluster([(0, 0), (4, 1)], most={"CPU": 24, "GPU": 6}).install(monkeypatch)
    wait_for_resources(4, 1, 60, "training", poll_s=0.01)
    assert cluster.requests == [(4, 1), (0, 0)]


# --- the device --------------------------------------------------------------------------------
def test_device_rule() -> None:
    assert torch_device(0) == "cpu"
    assert torch_device(0, assigned=["0"], cuda_usable=lambda: True) == "cpu"  # asked for none: CPU
    assert torch_device(1, assigned=["0"], cuda_usable=lambda: True) == "cuda"
    assert torch_device(0.25, assigned=[3], cuda_usable=lambda: True) == "cuda"


def test_a_gpu_without_cuda_fails_naming_the_fix() -> None:
    with pytest.raises(RuntimeError, match=r"Ray assigned GPU\(s\) \['0'\].*CUDA is not usable.*--gpus-per-worker 0"):
        torch_device(1, assigned=["0"], cuda_usable=lambda: False)


def test_asked_but_not_assigned_fails() -> None:
    with pytest.raises(RuntimeError, match="asked for 1 GPUs but Ray assigned it none"):
        torch_device(1, assigned=[], cuda_usable=lambda: True)


# --- each job's intent -------------------------------------------------------------------------
@pytest.mark.parametrize("options, gpus, reason", [
    ({"checkpoint": "vit_h"}, 1, "the sam vit_h teacher runs on GPU (by intent"),
    ({"teacher": "sam", "checkpoint": "/w/sam.pth", "variant": "vit_b"}, 1, "the sam vit_b teacher runs on GPU"),
    ({"teacher": "sam", "checkpoint": "s3://b/tiny.pth"}, 1, "the sam teacher runs on GPU"),
    ({}, 0, "the grabcut teacher runs on CPU (OpenCV on CPU) (by intent"),
    ({"teacher": "box"}, 0, "the box teacher runs on CPU (filled boxes, no model)"),
    ({"checkpoint": "vit_h", "gpus_per_worker": 0}, 0, "asked with --gpus-per-worker 0; by intent 1: the sam vit_h"),
])
def test_pseudolabel_intent(options, gpus, reason) -> None:
    from bpiml.pseudolabel.config import PseudoLabelConfig

    decision = PseudoLabelConfig(**options).gpu_decision()
    assert decision.gpus_per_worker == gpus and decision.reason.startswith(reason)


@pytest.mark.parametrize("img_size, asked, gpus, reason", [
    (224, None, 1, "training the student at 224 px runs on GPU (by intent"),
    (512, None, 1, "training the student at 512 px runs on GPU"),
    (64, None, 0, "a 64 px student (below the default 224 px) is smoke/test-sized work for CPUs"),
    (224, 0, 0, "asked with --gpus-per-worker 0; by intent 1"),
    (64, 1, 1, "asked with --gpus-per-worker 1; by intent 0"),
])
def test_training_intent(img_size, asked, gpus, reason) -> None:
    from bpiml.model.config import StudentConfig
    from bpiml.train.config import TrainConfig

    decision = TrainConfig(model=StudentConfig(img_size=img_size), gpus_per_worker=asked).gpu_decision()
    assert decision.gpus_per_worker == gpus and decision.reason.startswith(reason)
