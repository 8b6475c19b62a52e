"""`bpiml <command> ...`: one entry point for the small tools around the two jobs.

Each command lives beside the code it drives, as a function `cli_<name>(argv) -> int`;
this file only maps names to those functions and imports them lazily (fast `--help`).
"""

from __future__ import annotations

import importlib
import sys

from bpiml.runtime.logs import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:function", one-line help)
    "import-imdl": ("bpiml.data.importers.cli:cli_import_imdl", "IMDL-BenCo list JSON -> store manifest with boxes derived from masks"),
    "import-coco": ("bpiml.data.importers.cli:cli_import_coco", "COCO detection JSON -> store manifest"),
    "make-sample": ("bpiml.data.sample:cli_make_sample", "write the synthetic sample store (the embedded default)"),
    "model-info": ("bpiml.model.info:cli_model_info", "parameters and FLOPs of the student and its ablations"),
    "predict": ("bpiml.evaluation.cli:cli_predict", "predict a mask for one image with a registered model or checkpoint"),
    "evaluate": ("bpiml.evaluation.cli:cli_evaluate", "evaluate a model on test lists; tables to stdout and MLflow"),
    "audit": ("bpiml.evaluation.audit:cli_audit", "pseudo-mask quality audit of a pseudo-labeled store against GT"),
    "report": ("bpiml.evaluation.cli:cli_report", "HTML/PNG visual report"),
    "review": ("bpiml.review.cli:cli_review", "review pseudo masks: Label Studio export/import, a static page, undo"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: bpiml <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "examples:",
              "  bpiml import-imdl --index data/casia/index.json --out stores/casia --split-by-scene --pad 0.05",
              "  bpiml predict --model models:/bpiml-student@champion --image photo.jpg --out pred/ --probs npy",
              "  bpiml evaluate --model models:/bpiml-student@champion --dataset cvip=data/cvip/index.json --out eval/",
              "", "run `bpiml <command> --help` for a command's options; the Ray jobs are jobs/*.py (docs/cli.md)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bpiml: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    setup_logging()
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
