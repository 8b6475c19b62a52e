"""A quiet, truthful console: progress with the true total, --quiet/--verbose, no traceback for non-errors."""

import logging
from pathlib import Path

import pytest

from bpiml.runtime import jobcli, progress

REPO = Path(__file__).resolve().parents[1]


def test_progress_lines_use_the_true_total_or_none(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n\n{"id": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"id": 3}')  # no final newline
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert progress.count_records(files) == 3
    assert progress.count_records(files, max_bytes=10) is None  # too big to count: no made-up total
    assert progress.line("predict", {"images": 1}, ("images",), 3, 2.0) == \
        "predict: 1/3 images (33%), 0.5 images/s, about 4 s left"
    assert progress.line("predict", {"images": 5}, ("images",), None, 1.0) == "predict: 5 images done, 5.0 images/s"


def test_quiet_and_verbose_set_the_level(monkeypatch) -> None:
    parser = jobcli.job_parser("jobs/x.py", "doc", jobcli_config(), "smoke")
    assert jobcli.log_level(parser.parse_args([])) == logging.INFO
    assert jobcli.log_level(parser.parse_args(["--quiet"])) == logging.WARNING
    assert jobcli.log_level(parser.parse_args(["-v"])) == logging.DEBUG
    with pytest.raises(SystemExit):
        parser.parse_args(["--quiet", "--verbose"])


def jobcli_config():
    from dataclasses import dataclass

    from bpiml.config import BaseConfig, field

    @dataclass
    class Options(BaseConfig):
        size: int = field(3, "a size")

    return Options


def test_quiet_reaches_the_training_workers_and_turns_ray_data_bars_off(monkeypatch) -> None:
    from ray.data import DataContext

    from bpiml.runtime import raycluster

    root = logging.getLogger()
    level, bars = root.level, DataContext.get_current().enable_progress_bars
    monkeypatch.delenv("BPIML_LOG_LEVEL", raising=False)
    try:
        jobcli.setup_console(jobcli.job_parser("jobs/x.py", "doc", jobcli_config()).parse_args(["--quiet"]))
        assert root.level == logging.WARNING and not DataContext.get_current().enable_progress_bars
        assert raycluster.worker_env()["BPIML_LOG_LEVEL"] == "WARNING"  # forwarded to Ray Train workers
    finally:
        root.setLevel(level)
        DataContext.get_current().enable_progress_bars = bars
        monkeypatch.delenv("BPIML_LOG_LEVEL", raising=False)
