"""Shared fixtures. Modules opt in, e.g. `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""

from __future__ import annotations

import pytest
from stack_fixtures import STARTUP, local_stack, s3_env  # noqa: F401  (the real local services, started on first use)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on shared CI cores threads oversubscribe badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001, ARG001 - pytest hook
    if STARTUP:
        terminalreporter.write_line(f"local stack (SeaweedFS, MLflow, Ray head + workers) started in "
                                    f"{STARTUP['seconds']:.1f} s")
