"""One flag vocabulary across the jobs, errors that name flags (exit 2), `--config` honoured by every job
and `bpiml` command, and a `--help` that imports no torch, Ray or MLflow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bpiml.config import parse_gpus

REPO = Path(__file__).resolve().parents[1]
JOBS = ("pseudolabel", "train", "predict", "evaluate", "synthesize")  # the five batch jobs
# flag -> the argparse `type` it parses with (None: argparse's own, a string)
SHARED = {"--num-workers": int, "--cpus-per-worker": float, "--gpus-per-worker": parse_gpus,
          "--max-reject-rate": float, "--s3-endpoint": str, "--resource-wait-s": float, "--config": None}
SERVE_SHARED = ("--cpus-per-worker", "--gpus-per-worker", "--resource-wait-s", "--s3-endpoint", "--config")
OLD = ("--num-actors", "--concurrency", "--cpus-per-task", "--cpus-per-actor", "--num-cpus-per-worker",
       "--gpus-per-actor", "--use-gpu", "--num-gpus-per-worker", "--max-unreadable")
# what each job needs besides the shared keys for its config to be valid
REQUIRED = {"predict": {"model": "m", "store": "s", "out": "o"},
            "evaluate": {"model": "m", "datasets": ["a=x.json"], "out": "o"},
            "serve": {"model": "m"}}
HEAVY = ("torch", "ray", "mlflow", "timm")


def job(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bpiml_job_{name}", REPO / "jobs" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", JOBS)
def test_the_five_jobs_share_one_vocabulary(name: str) -> None:
    module = job(name)
    flags = actions(module.build_parser())
    assert not [f for f in OLD if f in flags], f"jobs/{name}.py still has an old flag name"
    for flag, kind in SHARED.items():
        assert flag in flags, f"jobs/{name}.py lacks {flag}"
        assert flags[flag].type is kind, (name, flag, flags[flag].type)
        assert flags[flag].default in (argparse.SUPPRESS, None), (name, flag)  # only what was given is applied
    config = module.parse_args(_required_flags(name))[1]
    assert config.gpus_per_worker is None  # auto: decided by what the job runs
    assert (config.resource_wait_s, config.s3_endpoint) == (600.0, None)
    assert isinstance(config.num_workers, int) and config.num_workers >= 0
    assert config.cpus_per_worker > 0 and 0 <= config.max_reject_rate <= 1


def test_the_shared_flags_mean_the_same_in_every_help() -> None:
    """The same help text, bar the unit of work ("teacher actor", "training worker"...)."""
    helps = {name: actions(job(name).build_parser()) for name in JOBS}
    for flag in ("--resource-wait-s", "--s3-endpoint", "--config"):
        assert len({h[flag].help for h in helps.values()}) == 1, flag
    for name, flags in helps.items():
        assert "auto" in flags["--gpus-per-worker"].help and "0 = CPU only" in flags["--gpus-per-worker"].help, name


def test_serve_has_the_resource_flags() -> None:
    flags = actions(job("serve").build_parser())
    assert all(f in flags for f in SERVE_SHARED) and not [f for f in OLD if f in flags]
    assert flags["--gpus-per-worker"].type is parse_gpus


def _required_flags(name: str) -> list[str]:
    out: list[str] = []
    for key, value in REQUIRED.get(name, {}).items():
        for item in value if isinstance(value, list) else [value]:
            out += [f"--{key.replace('_', '-')}", item]
    return out


@pytest.mark.parametrize("name", [*JOBS, "serve"])
def test_config_file_values_reach_the_config_and_flags_override_them(name: str, tmp_path: Path) -> None:
    module = job(name)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({**REQUIRED.get(name, {}), "cpus_per_worker": 0.75, "resource_wait_s": 7.0,
                                "gpus_per_worker": 0}))
    _, config = module.parse_args(["--config", str(path)])
    assert (config.cpus_per_worker, config.resource_wait_s, config.gpus_per_worker) == (0.75, 7.0, 0)
    _, config = module.parse_args(["--config", str(path), "--resource-wait-s", "9", "--gpus-per-worker", "auto"])
    assert (config.cpus_per_worker, config.resource_wait_s, config.gpus_per_worker) == (0.75, 9.0, None)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bpiml_commands_honour_their_config_file(command: str, tmp_path: Path) -> None:
    from bpiml.evaluation.config import EvalConfig, ImagePredictConfig, evaluate_parser, predict_image_parser
    from bpiml.runtime.jobcli import parse_job

    parser, cls = ((predict_image_parser(), ImagePredictConfig) if command == "predict"
                   else (evaluate_parser(), EvalConfig))
    values = ({"model": "m", "image": "a.jpg", "out": "o", "probs": "npy"} if command == "predict"
              else {"model": "m", "datasets": ["a=x.json"], "out": "o", "probs": "npy"})
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(values))
    assert parse_job(parser, cls, ["--config", str(path)])[1].probs == "npy"
    assert parse_job(parser, cls, ["--config", str(path), "--probs", "none"])[1].probs == "none"


@pytest.mark.parametrize(("name", "argv", "message"), [
    ("predict", [], "--model is required"),
    ("predict", ["--model", "m", "--out", "o"], "--store is required"),
    ("evaluate", ["--model", "m", "--out", "o"], "--datasets is required"),
    ("train", ["--num-workers", "0"], "--num-workers must be in [1, inf], got 0"),
    ("train", ["--model-width", "0"], "--model-width must be a positive integer"),
    ("train", ["--supervision", "teacher"], "argument --supervision: invalid choice"),
    ("pseudolabel", ["--teacher", "sam"], "needs --checkpoint"),
    ("pseudolabel", ["--variant", "vit_x"], "argument --variant: invalid choice"),
    ("pseudolabel", ["--gpus-per-worker", "many"], "argument --gpus-per-worker"),
    ("synthesize", ["--max-reject-rate", "2"], "--max-reject-rate must be in [0, 1], got 2.0"),
    ("serve", [], "--model is required"),
    ("train", ["--config", "/nonexistent/c.yaml"], "--config /nonexistent/c.yaml"),
])
def test_bad_options_are_argparse_errors_naming_the_flag(name: str, argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        job(name).parse_args(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err, err


def test_a_bad_config_file_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_actors: 2\n")
    with pytest.raises(SystemExit):
        job("pseudolabel").parse_args(["--config", str(path)])
    assert "unknown PseudoLabelConfig key(s): num_actors" in capsys.readouterr().err


def test_a_missing_option_exits_2_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "predict.py")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 2 and "--model is required" in done.stderr and "Traceback" not in done.stderr


HELP_PROBE = """
import importlib.util, json, resource, sys
target = sys.argv[1]
try:
    if target.startswith("jobs/"):
        spec = importlib.util.spec_from_file_location("job", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.parse_args(["--help"])
    else:
        from bpiml import cli
        cli.main([target, "--help"])
except SystemExit:
    pass
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"heavy": [m for m in %r if m in sys.modules], "cpu_s": usage.ru_utime + usage.ru_stime}))
""" % (HEAVY,)


def _help_probe(target: str) -> dict:
    done = subprocess.run([sys.executable, "-c", HELP_PROBE, target], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("target", [f"jobs/{name}.py" for name in (*JOBS, "serve")])
def test_job_help_imports_no_torch_ray_or_mlflow(target: str) -> None:
    """CPU seconds, not wall time: the bound holds on a machine busy with other work."""
    probe = _help_probe(target)
    assert probe["heavy"] == [] and probe["cpu_s"] < 1.5, probe


def _commands() -> list[str]:
    from bpiml import cli

    return list(cli.COMMANDS)


@pytest.mark.parametrize("command", _commands())
def test_bpiml_command_help_imports_no_torch_ray_or_mlflow(command: str) -> None:
    probe = _help_probe(command)
    assert probe["heavy"] == [] and probe["cpu_s"] < 1.5, probe
