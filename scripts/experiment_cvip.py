"""CVIP experiment: teacher supervision comparison and the MGFM ablation (Table 5), held-out scenes.

    .venv/bin/python scripts/experiment_cvip.py --data /work/shared/data/cvip_dev --work /tmp/cvip_exp \
        [--epochs N] [--quick]

1. imports the IMDL-BenCo list into `<work>/store` (link mode, whole scenes held out as val);
2. pseudo-labels it with the `box` and `grabcut` teachers (`<work>/pseudo-<teacher>`; resumable);
3. trains one student per row of `RUNS` on the train scenes only (`<work>/runs/<run>`);
4. evaluates each best checkpoint on the val scenes (`<work>/eval/<run>`) and writes one table:
   `<work>/results.md`, `results.json`, `results.csv` (also printed).

Every step skips what an earlier call finished: the import and the pseudo masks are reused, a
finished run (marker `<work>/runs/<run>/experiment_done.json`) is not retrained, an interrupted
one resumes from its latest checkpoint (bpiml.train.job: same run name + storage path), and an
evaluation of the same checkpoint is read back. Runs are logged to MLflow at
`sqlite:///<work>/mlflow.db` (evaluation metrics go into the training run).
`--quick` is a smoke test of the script itself: a few images, 1 epoch, tiny inputs, in `<work>/quick`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("experiment_cvip")

TEACHERS = ("box", "grabcut")
DONE_FILE = "experiment_done.json"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One trained student: its targets and its MGFM variant."""

    name: str
    groups: tuple[str, ...]  # table sections the row belongs to: supervision and/or ablation
    teacher: str  # pseudo-labeled store the run reads (for "gt" only its GT masks are used)
    supervision: str  # pseudo | gt
    use_memory: bool
    use_gating: bool


RUNS = (
    RunSpec("box-full", ("supervision",), "box", "pseudo", True, True),
    RunSpec("grabcut-full", ("supervision", "ablation"), "grabcut", "pseudo", True, True),
    RunSpec("gt-full", ("supervision",), "grabcut", "gt", True, True),
    RunSpec("grabcut-baseline", ("ablation",), "grabcut", "pseudo", False, False),
    RunSpec("grabcut-no-memory", ("ablation",), "grabcut", "pseudo", False, True),
    RunSpec("grabcut-no-gating", ("ablation",), "grabcut", "pseudo", True, False),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding the IMDL-BenCo index.json (CVIP dev set)")
    p.add_argument("--work", required=True, help="output folder (stores, runs, evaluations, MLflow DB, tables)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 6; --quick: 1)")
    p.add_argument("--img-size", type=int, default=None, help="student input size (default: 128; --quick: 64)")
    p.add_argument("--batch-size", type=int, default=8, help="images per training worker per step")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP processes)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per training worker")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--register", action="store_true", help="log + register each best model in MLflow (slower)")
    p.add_argument("--runs", nargs="*", default=None, help=f"only these runs (default: all of {[r.name for r in RUNS]})")
    p.add_argument("--quick", action="store_true", help="smoke test: few images, 1 epoch, 64 px inputs")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 6)
    args.img_size = args.img_size or (64 if args.quick else 128)
    if args.epochs < 1 or args.img_size % 32 or args.img_size < 32:
        p.error(f"--epochs must be >= 1 and --img-size a multiple of 32, got {args.epochs} and {args.img_size}")
    known = {r.name for r in RUNS}
    unknown = sorted(set(args.runs or []) - known)
    if unknown:
        p.error(f"unknown run(s) {unknown}; known: {sorted(known)}")
    return args


# --- 1. import --------------------------------------------------------------------------------
QUICK_PER_SPLIT = {("train", True): 16, ("train", False): 4, ("val", True): 8, ("val", False): 4}  # (split, forged)


def import_store(data: str, work: Path, quick: bool) -> str:
    """`<work>/store` from the index (scene split); `--quick` keeps a few records of each kind."""
    from bpiml.data.importers.imdl import import_imdl
    from bpiml.data.manifest import read_manifest, write_manifest

    store = work / "store"
    if not (store / "manifest.jsonl").exists():
        index = os.path.join(data, "index.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"--data {data}: no index.json there")
        summary = import_imdl(index, str(store), link=True, split_by_scene=True, val_fraction=0.2,
                              merge_distance=4, pad=0.05, seed=0)
        logger.info("import:\n%s", summary.format())
        if quick:
            kept, seen = [], dict.fromkeys(QUICK_PER_SPLIT, 0)
            for rec in read_manifest(str(store)):
                key = (rec.split, rec.mask is not None)
                if seen.get(key, 0) < QUICK_PER_SPLIT.get(key, 0):
                    seen[key] += 1
                    kept.append(rec)
            write_manifest(kept, str(store))
    counts: dict[str, int] = {}
    for rec in read_manifest(str(store)):
        key = f"{rec.split}/{'forged' if rec.mask else 'authentic'}"
        counts[key] = counts.get(key, 0) + 1
    logger.info("store %s: %s", store, counts)
    return str(store)


# --- 2. pseudo-labels ---------------------------------------------------------------------------
def pseudo_label(store: str, work: Path, teachers: tuple[str, ...] = TEACHERS) -> dict[str, dict[str, Any]]:
    """teacher -> summary.json of `<work>/pseudo-<teacher>` (already-labeled images are skipped)."""
    from bpiml.pseudolabel.config import PseudoLabelConfig
    from bpiml.pseudolabel.job import run_pseudolabel

    out = {}
    for teacher in teachers:
        cfg = PseudoLabelConfig(store=store, out=str(work / f"pseudo-{teacher}"), teacher=teacher,
                                num_workers=2, cpus_per_worker=0.5, batch_size=4)
        out[teacher] = run_pseudolabel(cfg)
        logger.info("teacher %s: mean pseudo-vs-GT IoU %s", teacher, out[teacher]["mean_iou_vs_gt"])
    return out


# --- 3. training ----------------------------------------------------------------------------------
def train_config(spec: RunSpec, args: argparse.Namespace, work: Path) -> Any:
    from bpiml.model.student import StudentConfig
    from bpiml.train.config import TrainConfig

    return TrainConfig(
        store=str(work / f"pseudo-{spec.teacher}"), storage_path=str(work / "runs"),
        run_name=f"{spec.name}-{args.img_size}px", epochs=args.epochs, batch_size=args.batch_size,
        num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, supervision=spec.supervision,
        model=StudentConfig(use_memory=spec.use_memory, use_gating=spec.use_gating, img_size=args.img_size),
        tracking_uri=tracking_uri(work), experiment=experiment_name(args), dice_weight=0.5,
        register=f"cvip-{spec.name}" if args.register else "", seed=0,
        log_images=2 if args.quick else 4, warmup_epochs=min(1.0, float(args.epochs)),
    )


def tracking_uri(work: Path) -> str:
    return f"sqlite:///{work.resolve() / 'mlflow.db'}"


def experiment_name(args: argparse.Namespace) -> str:
    return "cvip-experiment-quick" if args.quick else "cvip-experiment"


def train(spec: RunSpec, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one run; returns its done-marker content."""
    from bpiml.train.job import run_training

    config = train_config(spec, args, work)
    done_path = work / "runs" / config.run_name / DONE_FILE
    if done_path.exists():
        done = json.loads(done_path.read_text())
        if done["epochs"] == config.epochs:
            logger.info("run %s finished earlier (%d epochs): skipped", config.run_name, config.epochs)
            return done
        if done["epochs"] > config.epochs:
            raise ValueError(f"run {config.run_name} already trained {done['epochs']} epochs > --epochs "
                             f"{config.epochs}; use another --work or a larger --epochs")
        logger.info("run %s: continuing from %d to %d epochs", config.run_name, done["epochs"], config.epochs)
    started = time.perf_counter()
    result = run_training(config)
    best = max(result.history, key=lambda row: row.get("score", -math.inf)) if result.history else {}
    done = {
        "run_name": config.run_name, "epochs": config.epochs, "best_checkpoint": result.best_checkpoint,
        "best_epoch": int(best["epoch"]) if best else None, "mlflow_run_id": result.mlflow_run_id,
        "train_seconds": round(time.perf_counter() - started, 1), "history": result.history,
        "images_per_s": round(sum(r["images_per_s"] for r in result.history) / max(1, len(result.history)), 2),
    }
    if done_path.exists():  # a continued run: keep the total time
        done["train_seconds"] += json.loads(done_path.read_text()).get("train_seconds", 0.0)
    done_path.write_text(json.dumps(done, indent=1) + "\n")
    return done


# --- 4. evaluation ------------------------------------------------------------------------------
def evaluate(spec: RunSpec, done: dict[str, Any], store: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The best checkpoint on the held-out val scenes; returns the `cvip_val` table row."""
    from bpiml.evaluation.evaluate import EvalConfig, run_evaluation

    out = work / "eval" / done["run_name"]
    results = out / "results.json"
    if results.exists():
        saved = json.loads(results.read_text())
        if saved.get("model") == done["best_checkpoint"]:
            logger.info("evaluation of %s found in %s: reused", done["run_name"], out)
            return next(r for r in saved["table"] if r["kind"] == "set")
    config = EvalConfig(model=done["best_checkpoint"], datasets=[f"cvip_val={store}"], split="val", out=str(out),
                        batch_size=8, num_workers=1, cpus_per_worker=1.0, tracking_uri=tracking_uri(work),
                        mlflow_run_id=done["mlflow_run_id"])
    result = run_evaluation(config)
    row = next(r for r in result["table"] if r["kind"] == "set")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


# --- the table ------------------------------------------------------------------------------------
COLUMNS = [  # (key, header)
    ("run", "run"), ("groups", "table"), ("supervision", "supervision"), ("memory", "memory"),
    ("gating", "gating"), ("pseudo_iou", "pseudo IoU"), ("epochs", "epochs"), ("best_epoch", "best ep."),
    ("pixel_f1", "val pixel F1"), ("pixel_iou", "val pixel IoU"), ("pixel_auc", "val pixel AUC"),
    ("image_auc", "val image AUC"), ("image_bacc", "val image bACC"), ("train_min", "train min"),
]


def table_row(spec: RunSpec, done: dict[str, Any], evaluation: dict[str, Any],
              summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pseudo_iou = summaries[spec.teacher]["mean_iou_vs_gt"] if spec.supervision == "pseudo" else None
    return {
        "run": done["run_name"], "groups": "+".join(spec.groups),
        "supervision": f"{spec.teacher} teacher" if spec.supervision == "pseudo" else "GT masks",
        "memory": "yes" if spec.use_memory else "no", "gating": "yes" if spec.use_gating else "no",
        "pseudo_iou": pseudo_iou, "epochs": done["epochs"],
        "best_epoch": None if done["best_epoch"] is None else done["best_epoch"] + 1,
        **{k: evaluation.get(k) for k in ("pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_bacc")},
        "n_val_forged": evaluation.get("n_manipulated"), "n_val_authentic": evaluation.get("n_authentic"),
        "train_min": round(done["train_seconds"] / 60, 1), "images_per_s": done["images_per_s"],
        "mlflow_run_id": done["mlflow_run_id"], "checkpoint": done["best_checkpoint"],
    }


METRIC_KEYS = ("pseudo_iou", "pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_bacc")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key in METRIC_KEYS else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], work: Path) -> str:
    md = markdown(rows)
    (work / "results.md").write_text(md + "\n")
    (work / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    (work / "results.csv").write_text(buf.getvalue())
    return md


def start_ray(num_cpus: int | None) -> None:
    """Local Ray (or RAY_ADDRESS); one retry, because a loaded machine can time out raylet startup."""
    import ray

    from bpiml.runtime.raycluster import init_ray

    try:
        init_ray(num_cpus=num_cpus)
    except Exception as err:  # Ray raises a plain Exception on a startup timeout
        logger.warning("Ray did not start (%s); retrying once in 10 s", err)
        ray.shutdown()
        time.sleep(10)
        init_ray(num_cpus=num_cpus)


# --- main -------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    work = Path(args.work).resolve() / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    store = import_store(args.data, work, args.quick)
    start_ray(args.num_cpus)
    t0 = time.perf_counter()
    summaries = pseudo_label(store, work)
    pseudo_seconds = time.perf_counter() - t0
    rows = []
    for spec in RUNS:
        if args.runs and spec.name not in args.runs:
            continue
        done = train(spec, args, work)
        evaluation = evaluate(spec, done, store, args, work)
        rows.append(table_row(spec, done, evaluation, summaries))
        logger.info("%s: val pixel F1 %s image AUC %s", spec.name, evaluation.get("pixel_f1"),
                    evaluation.get("image_auc"))
    meta = {
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "data": os.path.abspath(args.data), "epochs": args.epochs, "img_size": args.img_size,
        "batch_size": args.batch_size, "num_workers": args.num_workers, "cpus_per_worker": args.cpus_per_worker,
        "pseudo_seconds": round(pseudo_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
        "teachers": {t: {k: s.get(k) for k in ("mean_iou_vs_gt", "images_with_gt", "labeled_total", "teacher")}
                     for t, s in summaries.items()},
        "tracking_uri": tracking_uri(work), "experiment": experiment_name(args),
    }
    md = write_outputs(rows, meta, work)
    print(md)
    print(f"\nwall time {meta['wall_seconds'] / 60:.1f} min; tables in {work}/results.(md|json|csv); "
          f"MLflow: {meta['tracking_uri']} (experiment {meta['experiment']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
