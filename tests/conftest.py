"""Shared fixtures. Modules opt in, e.g. `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""

from __future__ import annotations

import os
import tempfile

import pytest
from stack_fixtures import STARTUP, local_stack, s3_env  # noqa: F401  (the real local services, started on first use)

# Tests never reach the internet: offline (BPIML_OFFLINE, bpiml.data.download) the pretrained-backbone
# default (`--model-backbone-weights auto`) falls back to random init at once, and were the flag unset,
# it would find nothing listening here. Set before the local stack starts, so its Ray nodes (and every
# job on them) inherit it. test_pretrained and test_weights serve real files on loopback servers of
# their own (and unset BPIML_OFFLINE).
os.environ.setdefault("BPIML_OFFLINE", "1")
os.environ.setdefault("BPIML_HF_BASE_URL", "http://127.0.0.1:9")
# ... and never find (or fill) the developer's own Hugging Face cache.
os.environ.setdefault("HF_HUB_CACHE", os.path.join(tempfile.gettempdir(), f"bpiml-tests-hf-hub-{os.getuid()}"))


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


def _group(item: pytest.Item) -> str:
    """One group for every test on the local stack (one stack serves them all: two stacks side by side
    on 2 CI cores made the run 36.7 min instead of 31, every stack test about twice as slow); every
    other module is a group of its own."""
    return "stack" if _uses_stack(item) else item.module.__name__


def pytest_itemcollected(item: pytest.Item) -> None:
    """For `pytest -n 2 --dist loadgroup` (scripts/test.sh): the tests on the local stack form one
    group (they take most of the time); every other module runs whole in one worker, so its fixtures
    (a local Ray, a training run) start once. (Marked here, as items are collected: xdist reads the
    groups in its own collection_modifyitems.)"""
    item.add_marker(pytest.mark.xdist_group(_group(item)))


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


def _seconds_by_group(stats: dict) -> dict[str, float]:
    """Test seconds (setup + call + teardown) summed by xdist group (`nodeid@group`), longest first."""
    totals: dict[str, float] = {}
    for reports in stats.values():
        for report in reports:
            if isinstance(getattr(report, "duration", None), float) and "@" in getattr(report, "nodeid", ""):
                group = report.nodeid.rsplit("@", 1)[1]
                totals[group] = totals.get(group, 0.0) + report.duration
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ARG001 - pytest hook
    groups = _seconds_by_group(terminalreporter.stats)
    if groups:  # what to rebalance when the run gets long: the stack groups should end together
        top = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in list(groups.items())[:8])
        terminalreporter.write_line(f"minutes by group: {top}; all {sum(groups.values()) / 60:.1f}")
    if STARTUP:
        terminalreporter.write_line(f"local stack (SeaweedFS, MLflow, Ray head + workers) started in "
                                    f"{STARTUP['seconds']:.1f} s")
