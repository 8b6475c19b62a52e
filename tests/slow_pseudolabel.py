"""The pseudo-labeling job with a slowed teacher that logs what it labels, for the kill tests
(tests/test_kill.py): each batch waits `--teacher-delay-s` first, so that a kill lands mid-run
whatever the machine's speed, and appends its ids to `--label-log` (a file every node sees), so
the test can count the images labeled twice. The production job is unchanged: this driver injects
the slowed labeler through `run_pseudolabel(cfg, labeler=...)`.

    python tests/slow_pseudolabel.py <jobs/pseudolabel.py flags> --teacher-delay-s 1 --label-log /shared/x.log
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def slowed(delay_s: float, log: str) -> type:
    """A `TeacherLabeler` that sleeps `delay_s` per batch, then appends the batch's ids to `log`."""
    # Here, not at the top: jobs/pseudolabel.py keeps the loopback address before anything imports ray.
    from bpiml.pseudolabel.labeler import TeacherLabeler


    class SlowTeacherLabeler(TeacherLabeler):
        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            ids = [str(i) for i in batch["id"]]
            if ids:
                time.sleep(delay_s)
                with open(log, "a") as f:  # one write per batch: appends from several actors do not interleave
                    f.write("".join(f"{rid}\n" for rid in ids))
            return super().__call__(batch)

    return SlowTeacherLabeler


def main(argv: list[str]) -> int:
    hooks = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--teacher` is the job's
    hooks.add_argument("--teacher-delay-s", type=float, required=True)
    hooks.add_argument("--label-log", required=True)
    known, rest = hooks.parse_known_args(argv)
    spec = importlib.util.spec_from_file_location("bpiml_job_pseudolabel", REPO / "jobs" / "pseudolabel.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)  # keeps the loopback address before anything imports ray
    args, config = job.parse_args(rest)
    return job.main(args, config, labeler=slowed(known.teacher_delay_s, known.label_log))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
