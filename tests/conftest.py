"""Shared fixtures. Modules opt in, e.g. `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""

from __future__ import annotations

import os

import pytest
from stack_fixtures import STARTUP, local_stack, s3_env  # noqa: F401  (the real local services, started on first use)

# Tests never reach the internet: the pretrained-backbone default (`--model-backbone-weights auto`)
# finds nothing listening here and falls back to random init as it does offline. Set before the
# local stack starts, so its Ray nodes (and every job on them) inherit it. test_pretrained serves
# real files on a loopback server of its own.
os.environ.setdefault("BPIML_HF_BASE_URL", "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on shared CI cores threads oversubscribe badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of two CPUs for the module's tests (modules that defined their own keep theirs)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


STACK_FIXTURES = {"local_stack", "s3_env"}


def _uses_stack(item: pytest.Item) -> bool:
    return bool(STACK_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_itemcollected(item: pytest.Item) -> None:
    """For `pytest -n 2 --dist loadgroup` (scripts/test.sh): the tests on the local stack form one
    group, since one stack serves them all and they take most of the time; every other module runs
    whole in one worker, so its fixtures (a local Ray, a training run) start once. (Marked here, as
    items are collected: xdist reads the groups in its own collection_modifyitems.)"""
    item.add_marker(pytest.mark.xdist_group("stack" if _uses_stack(item) else item.module.__name__))


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ARG001 - pytest hook
    """The stack's tests first (the longest group starts at once); the order within is kept."""
    items.sort(key=lambda item: not _uses_stack(item))


IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ARG001 - pytest hook
    """Under CI=true (.ci/run) a skip is a failure: a missing service binary, Label Studio, Chromium or an
    earlier test's output must not let the run go green with the test never run."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ARG001 - pytest hook
    if STARTUP:
        terminalreporter.write_line(f"local stack (SeaweedFS, MLflow, Ray head + workers) started in "
                                    f"{STARTUP['seconds']:.1f} s")
