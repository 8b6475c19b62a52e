"""examples/: one config file per job, each read by its job's own parser (`--config FILE`) into the
values it states; a flag given beside it wins."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py"))


def _job(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bpiml_example_job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_holds(config: Any, values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        got = getattr(config, key)
        if isinstance(value, dict):
            _assert_holds(got, value, f"{where}.{key}")
        else:
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{where}.{key}: {got!r} != {value!r}"


def test_one_example_per_job() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == JOBS


@pytest.mark.parametrize("name", JOBS)
def test_each_example_parses_with_its_jobs_parser(name: str) -> None:
    path = EXAMPLES / f"{name}.yaml"
    values = yaml.safe_load(path.read_text())
    job = _job(name)
    _, config = job.parse_args(["--config", str(path)])
    _assert_holds(config, values, f"examples/{name}.yaml")
    _, config = job.parse_args(["--config", str(path), "--num-workers" if "num_workers" in values else
                                "--cpus-per-worker", "3"])
    assert getattr(config, "num_workers" if "num_workers" in values else "cpus_per_worker") == 3  # the flag wins
