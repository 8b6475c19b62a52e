"""Synthetic pretraining experiment: does a forgery synthesizer help a box-supervised student?

    .venv/bin/python scripts/experiment_synth.py --data /work/shared/data/cvip_dev \
        --natural /work/shared/data/natural --work /tmp/synth_exp [--seeds 0 1 2] [--eval NAME=index.json ...]

1. imports the CVIP list into `<work>/store` (scene split, as scripts/experiment_cvip.py);
2. builds the photo pool `<work>/photos` (symlinks): the natural photos and the CVIP *authentic* photos of
   the train scenes only, never a CVIP forgery, a CVIP mask or a val scene;
3. synthesizes `<work>/synth` (jobs/synthesize.py's job; `--synth-n` images, seed 0);
4. pseudo-labels the CVIP store with the teachers the chosen rows need (GrabCut: no SAM weights offline);
5. trains each row once per seed (`<work>/runs/<row>-s<seed>`): `box` (GrabCut masks of CVIP train),
   `synth` (synthetic only, exact masks), `synth+box` (synth pretraining, then box fine-tuning via
   --init-from), `gt` (CVIP GT masks: the upper bound), `synth+box-nomem` and `box-nomem` (a recipe
   without the memory bank: ablate whichever of `synth+box` and `box` scores best), `box-minconf` (`box`
   with `--min-confidence`, this script's flag) and `box-confweight` (`box` with `--confidence-weight`);
6. evaluates every run on the CVIP val scenes, the synthetic-only rows also on `cvip_ood` (every CVIP
   forgery and the val-scene authentic photos: no synthesis photo), and every row on each `--eval` set;
   writes `results.md/json`
   with the mean and spread over seeds: pixel F1/AUC, image AUC, the predicted forged share of
   authentic images, per set, and over the `--eval` sets alone their mean and the mean pooled over images.

Everything resumes: the stores, finished runs (`experiment_done.json`) and evaluations are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiment_cvip as cvip  # noqa: E402  (the import, training and evaluation steps are shared)

logger = logging.getLogger("experiment_synth")
ROWS = {  # row -> (pretrain on synth?, fine-tune store teacher or None, supervision, memory)
    "box": (False, "grabcut", "pseudo", True),
    "synth": (True, None, "gt", True),
    "synth+box": (True, "grabcut", "pseudo", True),
    "gt": (False, "grabcut", "gt", True),
    "synth+box-nomem": (True, "grabcut", "pseudo", False),
    "box-nomem": (False, "grabcut", "pseudo", False),
    "box-minconf": (False, "grabcut", "pseudo", True),
    "box-confweight": (False, "grabcut", "pseudo", True),
}
ROW_OPTIONS = {  # row -> further TrainConfig fields (the teacher-confidence rows differ from `box` only here)
    "box-minconf": lambda args: {"min_confidence": args.min_confidence},
    "box-confweight": lambda args: {"confidence_weight": True},
}
METRICS = ("pixel_f1", "pixel_auc", "image_auc", "authentic_area")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding the CVIP IMDL-BenCo index.json")
    p.add_argument("--natural", required=True, help="folder of natural photos (the synthesis pool)")
    p.add_argument("--work", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--eval", action="append", default=[], metavar="NAME=INDEX", help="further evaluation sets")
    p.add_argument("--synth-n", type=int, default=1500, help="synthetic images")
    p.add_argument("--synth-epochs", type=int, default=2, help="epochs of synthetic (pre)training")
    p.add_argument("--epochs", type=int, default=6, help="epochs on CVIP train")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per training worker (one more stays free for Ray Data)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--min-confidence", type=float, default=0.5, help="the box-minconf row's --min-confidence")
    p.add_argument("--quick", action="store_true", help="smoke test: few images, 1 epoch, 64 px")
    args = p.parse_args(argv)
    if args.quick:
        args.synth_n, args.synth_epochs, args.epochs, args.img_size, args.seeds = 48, 1, 1, 64, args.seeds[:2]
    args.register = False
    return args


def photo_pool(natural: str, store: str, work: Path) -> str:
    """`<work>/photos`: links to the natural photos and the CVIP train-scene authentic photos."""
    from bpiml.data.manifest import read_manifest

    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Path(natural) / n for n in sorted(os.listdir(natural))
               if n.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"))]
    sources += [Path(store) / r.image for r in read_manifest(store) if r.split == "train" and not r.boxes]
    wanted = {f"{i:04d}{src.suffix.lower()}": src.resolve() for i, src in enumerate(sources)}
    for name in os.listdir(folder):  # a changed source list must change the pool (and so its hash)
        if name not in wanted or os.path.realpath(folder / name) != str(wanted[name]):
            (folder / name).unlink()
    for name, src in wanted.items():
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(src)
    logger.info("photo pool: %d photos in %s", len(sources), folder)
    return str(folder)


def out_of_domain_list(store: str, work: Path) -> str:
    """`<work>/cvip_ood.json`: an IMDL-BenCo list of every CVIP image the synthesis pool never held (all
    forgeries, and the authentic photos of the val scenes), for the synthetic-only rows."""
    from bpiml.data.manifest import image_uri, mask_uri, read_manifest

    pairs = [[image_uri(store, r), mask_uri(store, r) if r.boxes else "Negative"]
             for r in read_manifest(store) if r.boxes or r.split != "train"]
    path = work / "cvip_ood.json"
    path.write_text(json.dumps(pairs, indent=0) + "\n")
    return str(path)


def synthesize(photos: str, work: Path, n: int) -> dict[str, Any]:
    from bpiml.synth.config import SynthConfig
    from bpiml.synth.job import run_synthesis

    return run_synthesis(SynthConfig(photos=photos, out=str(work / "synth"), n=n, seed=0, max_side=384, part_rows=32))


def run_config(row: str, seed: int, stage: str, args: argparse.Namespace, work: Path) -> Any:
    """The TrainConfig of one stage ("pretrain" or "main") of a row at a seed."""
    from bpiml.model.student import StudentConfig
    from bpiml.train.config import TrainConfig

    pretrain, teacher, supervision, memory = ROWS[row]
    if stage == "pretrain" or teacher is None:
        store, supervision, epochs, name = str(work / "synth"), "gt", args.synth_epochs, f"{'synth' if memory else 'synth-nomem'}-s{seed}"
        init = ""
    else:
        store, epochs, name = str(work / f"pseudo-{teacher}"), args.epochs, f"{row}-s{seed}"
        init = str(work / "runs" / f"{'synth' if memory else 'synth-nomem'}-s{seed}") if pretrain else ""
    return TrainConfig(
        store=store, storage_path=str(work / "runs"), run_name=name, epochs=epochs, batch_size=args.batch_size,
        num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, supervision=supervision,
        model=StudentConfig(use_memory=memory, img_size=args.img_size), init_from=init,
        tracking_uri=cvip.tracking_uri(work), experiment="synth-experiment", dice_weight=0.5, seed=seed,
        log_images=2, warmup_epochs=min(1.0, float(epochs)),
        **(ROW_OPTIONS[row](args) if row in ROW_OPTIONS and stage == "main" else {}))


def train(config: Any, work: Path) -> dict[str, Any]:
    """Train or reuse one run (the marker `experiment_done.json` beside its checkpoints)."""
    from bpiml.train.job import run_training

    done_path = work / "runs" / config.run_name / cvip.DONE_FILE
    if done_path.exists():
        done = json.loads(done_path.read_text())
        if done["epochs"] == config.epochs:
            return done
        logger.info("run %s trained %d epochs, %d asked: continuing it", config.run_name, done["epochs"], config.epochs)
    started = time.perf_counter()
    result = run_training(config)
    best = max(result.history, key=lambda r: r.get("score", -math.inf)) if result.history else {}
    done = {"run_name": config.run_name, "epochs": config.epochs, "best_checkpoint": result.best_checkpoint,
            "best_epoch": int(best["epoch"]) if best else None, "mlflow_run_id": result.mlflow_run_id,
            "train_seconds": round(time.perf_counter() - started, 1)}
    done_path.write_text(json.dumps(done, indent=1) + "\n")
    return done


def evaluate(done: dict[str, Any], sets: dict[str, str], split: str | None, work: Path, tag: str) -> list[dict]:
    """The table rows (per set, average, pooled) of one run on `sets`; reused when already computed."""
    from bpiml.evaluation.evaluate import EvalConfig, run_evaluation

    out = work / "eval" / f"{done['run_name']}-{tag}"
    saved = out / "results.json"
    if saved.exists() and json.loads(saved.read_text()).get("model") == done["best_checkpoint"]:
        return json.loads(saved.read_text())["table"]
    config = EvalConfig(model=done["best_checkpoint"], datasets=[f"{k}={v}" for k, v in sets.items()], split=split,
                        out=str(out), batch_size=8, num_workers=1, cpus_per_worker=1.0, save_masks=False,
                        probs="none", mlflow=False)
    return run_evaluation(config)["table"]


def set_rows(table: list[dict]) -> list[dict]:
    """Only the per-set rows of an evaluation: the [average] and [pooled] rows of a one-set evaluation repeat
    its set, and kept beside the --eval sets' they would share a key, mixing sets into the spread over seeds."""
    return [r for r in table if r["kind"] == "set"]


def summarize(results: dict[str, dict[int, list[dict]]]) -> list[dict[str, Any]]:
    """Mean and spread (population std) over seeds, per row and evaluated set."""
    out = []
    for row, per_seed in results.items():
        names = sorted({(r["kind"], r["name"]) for rows in per_seed.values() for r in rows if r["degradation"] == "none"})
        for kind, name in names:
            cells: dict[str, Any] = {"row": row, "set": name if kind == "set" else f"[{name}]", "seeds": len(per_seed)}
            for metric in METRICS:
                values = [r.get(metric) for rows in per_seed.values() for r in rows
                          if (r["kind"], r["name"]) == (kind, name) and r["degradation"] == "none"]
                values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
                cells[metric] = (statistics.fmean(values), statistics.pstdev(values)) if values else None
            out.append(cells)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| row | evaluated on | seeds | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for r in rows:
        cells = ["-" if r[m] is None else f"{r[m][0]:.3f} ± {r[m][1]:.3f}" for m in METRICS]
        lines.append(f"| {r['row']} | {r['set']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    work = Path(args.work).resolve() / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    store = cvip.import_store(args.data, work, args.quick)
    cvip.start_ray(args.num_cpus)
    needs_synth = any(ROWS[r][0] for r in args.rows)
    synth = synthesize(photo_pool(args.natural, store, work), work, args.synth_n) if needs_synth else None
    if any(ROWS[r][1] for r in args.rows):
        cvip.pseudo_label(store, work, teachers=("grabcut",))  # only the teacher these rows need
    extra = dict(e.split("=", 1) for e in args.eval)
    results: dict[str, dict[int, list[dict]]] = {}
    for seed in args.seeds:  # seeds outside: an interrupted experiment has whole seeds of every row
        for row in args.rows:
            if ROWS[row][0] and ROWS[row][1]:
                train(run_config(row, seed, "pretrain", args, work), work)
            done = train(run_config(row, seed, "main", args, work), work)
            tables = set_rows(evaluate(done, {"cvip_val": store}, "val", work, "val"))
            if ROWS[row][1] is None:  # out of domain: no image of it was a synthesis photo
                tables += set_rows(evaluate(done, {"cvip_ood": out_of_domain_list(store, work)}, None, work, "ood"))
            if extra:  # its [average] and [pooled] rows: over the --eval sets alone
                tables += evaluate(done, extra, None, work, "extra")
            results.setdefault(row, {})[seed] = tables
            logger.info("%s seed %d: %s", row, seed, [(r["name"], r.get("pixel_f1")) for r in tables if r["kind"] == "set"])
    table = summarize(results)
    md = markdown(table)
    meta = {"command": " ".join(sys.argv), "seeds": args.seeds, "epochs": args.epochs, "synth_epochs": args.synth_epochs,
            "synth_n": args.synth_n, "img_size": args.img_size, "synth_summary": synth,
            "wall_seconds": round(time.perf_counter() - started, 1)}
    (work / "results.md").write_text(md + "\n")
    (work / "results.json").write_text(json.dumps({**meta, "rows": table, "raw": results}, indent=1, default=str) + "\n")
    print(md)
    print(f"\nwall time {meta['wall_seconds'] / 60:.1f} min; {work}/results.(md|json)")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
