"""Evaluation: test-list parsing, the batch step on a dict with an oracle model, and the Ray job end to end."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from bpiml.data import degrade, imageio, manifest
from bpiml.data.rejects import RejectRateError
from bpiml.evaluation import cli, evaluate, inference, predict, streaming_metrics, tables, testsets
from bpiml.model.student import StudentConfig, build_student


class RedOracle(nn.Module):
    """Predicts 'manipulated' where the red channel is bright: exact on the generated test images."""

    class config:  # noqa: N801 - mimics Student.config
        img_size = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x[:, :1] - 0.5) * 40.0 + self.dummy


def _write_sets(root):
    """Two IMDL-BenCo lists: each 3 manipulated images (red square = mask) + 1 Negative."""
    rng = np.random.default_rng(0)
    sets = {}
    for s, name in enumerate(("set_a", "set_b")):
        folder = root / name
        (folder / "Tp").mkdir(parents=True)
        (folder / "Gt").mkdir()
        (folder / "Au").mkdir()
        entries = []
        for i in range(3):
            h, w = 40 + 8 * i, 56 - 4 * i
            image = np.zeros((h, w, 3), np.uint8)
            image[..., 1:] = rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
            image[..., 0] = rng.integers(0, 60, (h, w), dtype=np.uint8)
            mask = np.zeros((h, w), bool)
            mask[5 + i : 25 + i, 10 : 30 + s] = True
            image[mask, 0] = 255
            (folder / "Tp" / f"im{i}.png").write_bytes(imageio.encode_image(image, "png"))
            (folder / "Gt" / f"im{i}.png").write_bytes(imageio.encode_mask_png(mask))
            entries.append([f"Tp/im{i}.png", f"Gt/im{i}.png"])
        authentic = np.zeros((36, 36, 3), np.uint8)
        authentic[..., 0] = 20
        (folder / "Au" / "au0.png").write_bytes(imageio.encode_image(authentic, "png"))
        entries.append(["Au/au0.png", "Negative"])
        (folder / "index.json").write_text(json.dumps(entries))
        sets[name] = folder / "index.json"
    return sets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    sets = _write_sets(root)
    torch.manual_seed(0)
    student = build_student(StudentConfig(img_size=64, width=32, memory_slots=8))
    ckpt = root / "ckpt" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"model_config": student.config.to_dict(), "model_state": student.state_dict()}, ckpt)
    return {"root": root, "sets": sets, "ckpt": ckpt}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_load_test_list_and_store_items(data, tmp_path):
    items = testsets.load_test_list(str(data["sets"]["set_a"]))
    assert len(items) == 4 and items[-1]["mask"] == ""
    assert items[0]["image"].endswith("set_a/Tp/im0.png") and items[0]["mask"].endswith("set_a/Gt/im0.png")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["../../etc/passwd", "Negative"]]))
    with pytest.raises(ValueError, match="escapes"):
        testsets.load_test_list(str(bad))
    bad.write_text(json.dumps([["a.png"]]))
    with pytest.raises(ValueError, match="entry 0"):
        testsets.load_test_list(str(bad))
    store = str(data["sets"]["set_a"].parent)
    lines = [json.dumps(r) for r in [
        {"id": "t0", "image": "Tp/im0.png", "boxes": [[10, 5, 30, 25]], "mask": "Gt/im0.png", "split": "test"},
        {"id": "t1", "image": "Tp/im1.png", "boxes": [[10, 5, 30, 25]], "mask": None, "split": "test"},  # skipped
        {"id": "a0", "image": "Au/au0.png", "boxes": [], "mask": None, "split": "test"},
        {"id": "tr", "image": "Tp/im2.png", "boxes": [[1, 1, 2, 2]], "mask": "Gt/im2.png", "split": "train"},
    ]] + ["not a record"]
    rows = testsets.manifest_items({"text": np.array(lines, dtype=object)}, store, "test", need_gt=True)
    assert rows["id"].tolist() == ["t0", "a0", ""] and rows["mask"][0] == f"{store}/Gt/im0.png"
    assert rows["mask"][1] == "" and rows["error"][2].startswith("bad record") and rows["image"][2] == "not a record"
    assert testsets.manifest_items({"text": np.array(lines, dtype=object)}, store, None)["id"].tolist() == [
        "t0", "t1", "a0", "tr", ""]  # prediction: every record
    tripled = testsets.with_degradations(rows, "s", ["none", "jpeg:70"])
    assert tripled["degradation"].tolist() == ["none"] * 3 + ["jpeg:70"] * 3 and set(tripled["set"]) == {"s"}
    assert tripled["id"].tolist() == ["t0", "a0", ""] * 2


def test_parse_datasets_groups_and_config_errors():
    assert evaluate.parse_datasets(["a=x.json", "/d/cvip/index.json", "s3://b/store"]) == {
        "a": "x.json", "cvip": "/d/cvip/index.json", "store": "s3://b/store"}
    assert evaluate.parse_groups(["g=a, b", "h=c"]) == {"g": ["a", "b"], "h": ["c"]}
    with pytest.raises(ValueError, match="twice"):
        evaluate.parse_datasets(["a=x", "a=y"])
    with pytest.raises(ValueError, match="unknown test set"):
        evaluate.EvalConfig.from_dict({"model": "m", "out": "o", "datasets": ["a=x"], "groups": ["g=a,b"]})
    with pytest.raises(ValueError, match="jpeg"):
        evaluate.EvalConfig.from_dict({"model": "m", "out": "o", "datasets": ["a=x"], "degrade": ["jpeg:101"]})
    assert [d.name for d in degrade.parse_list(["jpeg:90,resize:0.5", "jpeg:90"])] == ["none", "jpeg:90", "resize:0.5"]


def test_degradations_keep_or_scale_size():
    image = np.random.default_rng(1).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    assert degrade.apply(image, degrade.parse("jpeg:50")).shape == image.shape
    assert not np.array_equal(degrade.apply(image, degrade.parse("jpeg:50")), image)
    assert degrade.apply(image, degrade.parse("resize:0.5")).shape == (15, 20, 3)
    noisy = degrade.parse("noise:5")
    np.testing.assert_array_equal(noisy(image), noisy(image))  # deterministic


def _batch(items, degradation="none", name="set_a"):
    return {k: np.array([str(v) for v in vals]) for k, vals in {
        "set": [name] * len(items), "degradation": [degradation] * len(items),
        "id": [i["id"] for i in items], "image": [i["image"] for i in items], "mask": [i["mask"] for i in items],
    }.items()}


def test_evaluator_batch_step_with_oracle(data, tmp_path):
    items = testsets.load_test_list(str(data["sets"]["set_a"]))
    items.append({"id": "missing", "image": str(tmp_path / "nope.png"), "mask": ""})
    step = evaluate.Evaluator("", out=str(tmp_path / "out"), save_masks=True, model=RedOracle())
    rows = step(_batch(items))
    passed = step({**_batch(items[:2]), "error": np.array(["", "bad record: x"])})  # a bad line: not loaded
    assert passed["error"].tolist() == ["", "bad record: x"] and math.isnan(passed["score"][1])
    assert list(rows["f1"][:3]) == [1.0, 1.0, 1.0] and list(rows["iou"][:3]) == [1.0, 1.0, 1.0]
    assert list(rows["auc"][:3]) == [1.0, 1.0, 1.0]
    assert rows["manipulated"].tolist() == [True, True, True, False, False]
    assert rows["score"][3] < 0.01 and math.isnan(rows["f1"][3])  # authentic: no pixel metrics
    assert rows["error"][4].startswith("FileNotFoundError")
    saved = imageio.load_mask(str(tmp_path / "out" / rows["pred_mask"][0]))
    np.testing.assert_array_equal(saved, imageio.load_mask(items[0]["mask"]))
    # resized input: prediction is compared at the mask's size
    resized = step(_batch(items[:1], "resize:0.5"))
    assert resized["f1"][0] > 0.8 and resized["pred_mask"][0] == ""


def test_aggregate_and_table_text():
    rows = [
        {"set": "a", "degradation": "none", "manipulated": True, "score": 0.9, "f1": 1.0, "iou": 1.0, "auc": 1.0, "error": ""},
        {"set": "a", "degradation": "none", "manipulated": True, "score": 0.8, "f1": 1.0, "iou": 1.0, "auc": 1.0, "error": ""},
        {"set": "a", "degradation": "none", "manipulated": False, "score": 0.2, "f1": math.nan, "iou": math.nan, "auc": math.nan, "error": ""},
        {"set": "b", "degradation": "none", "manipulated": True, "score": 0.4, "f1": 0.5, "iou": 0.25, "auc": 0.5, "error": ""},
        {"set": "b", "degradation": "none", "manipulated": True, "score": 0.4, "f1": 0.0, "iou": 0.0, "auc": 0.5, "error": "x"},
    ]
    table = tables.aggregate(rows, ["a", "b"], {"g": ["b"]}, ["none"])
    by = {r["name"]: r for r in table}
    assert by["a"]["pixel_f1"] == 1.0 and by["a"]["image_auc"] == 1.0 and by["a"]["image_bacc"] == 1.0
    assert by["b"]["n_images"] == 1 and math.isnan(by["b"]["image_auc"])  # failed row left out, no authentic
    assert by["average"]["pixel_f1"] == pytest.approx(0.75) and by["average"]["image_auc"] == 1.0  # each set once
    assert by["pooled"]["pixel_f1"] == pytest.approx(2.5 / 3) and by["pooled"]["n_images"] == 4  # each image once
    assert by["pooled"]["kind"] == "pooled" and [r["name"] for r in table] == ["a", "b", "average", "pooled", "g"]
    assert by["g"]["pixel_iou"] == pytest.approx(0.25) and by["g"]["kind"] == "group"
    stats = streaming_metrics.collect(streaming_metrics.block_sums(rows, 0.5))
    streamed = tables.stats_table(stats, ["a", "b"], {"g": ["b"]}, ["none"])
    assert [{k: v for k, v in r.items() if not isinstance(v, float) or not math.isnan(v)} for r in streamed] == [
        {k: v for k, v in r.items() if not isinstance(v, float) or not math.isnan(v)} for r in table]
    text = tables.format_table(table)
    assert "[average]" in text and "pix_F1" in text and "-" in text.splitlines()[-1]
    assert tables.table_csv(table).splitlines()[0].startswith("kind,name,degradation,n_images")
    assert tables.metric_name(by["a"] | {"degradation": "jpeg:70"}, "pixel_f1") == "eval/a/jpeg_70/pixel_f1"


def test_evaluation_job_on_ray(data, local_ray, tmp_path, capsys):
    out = tmp_path / "eval_out"
    argv = ["--model", str(data["ckpt"]), "--dataset", f"set_a={data['sets']['set_a']}",
            "--dataset", f"set_b={data['sets']['set_b']}", "--group", "in_dist=set_a", "--group", "both=set_a,set_b",
            "--degrade", "jpeg:70", "--out", str(out), "--num-workers", "1", "--cpus-per-worker", "0.5",
            "--batch-size", "4", "--no-mlflow"]
    assert cli.cli_evaluate(argv) == 0
    printed = capsys.readouterr().out
    assert "[in_dist]" in printed and "jpeg:70" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["images"] == 16 and result["failed"] == 0
    table = result["table"]
    names = {(r["name"], r["degradation"]) for r in table}
    assert names == {(n, d) for n in ("set_a", "set_b", "average", "pooled", "in_dist", "both") for d in ("none", "jpeg:70")}
    for r in table:
        assert r["n_images"] == {"set_a": 4, "set_b": 4, "in_dist": 4}.get(r["name"], 8)
        assert r["n_authentic"] == r["n_images"] / 4
        for key in tables.METRIC_KEYS:
            assert r[key] is not None and 0.0 <= r[key] <= 1.0, (r["name"], key, r[key])
    by = {(r["name"], r["degradation"]): r for r in table}
    assert by[("in_dist", "none")]["pixel_f1"] == pytest.approx(by[("set_a", "none")]["pixel_f1"])
    assert by[("both", "none")]["pixel_auc"] == pytest.approx(
        (by[("set_a", "none")]["pixel_auc"] + by[("set_b", "none")]["pixel_auc"]) / 2)
    per_image = list(tables.read_per_image(str(out)))
    assert len(per_image) == 16 and not (out / "per_image.jsonl").exists()
    assert all(p.name.startswith(("shard-", "_")) for p in (out / "per_image").iterdir())  # parts merged
    saved = [r["pred_mask"] for r in per_image if r["degradation"] == "none"]
    assert all((out / p).exists() for p in saved) and len(saved) == 8
    assert (out / "results.csv").read_text().count("\n") == len(table) + 1
    assert json.loads((out / "config.json").read_text())["degrade"] == ["jpeg:70"]
    rows = [{**r, "error": ""} for r in per_image]  # the streamed table is the in-memory one over the same rows
    args = (["set_a", "set_b"], {"in_dist": ["set_a"], "both": ["set_a", "set_b"]}, ["none", "jpeg:70"])
    exact = tables.aggregate(rows, *args)
    binned = tables.stats_table(streaming_metrics.collect(streaming_metrics.block_sums(rows, 0.5)), *args)
    assert [r["name"] for r in exact] == [r["name"] for r in table] == [r["name"] for r in binned]
    for got, want, hist in zip(result["table"], exact, binned):
        assert {k: got[k] for k in tables.COUNT_KEYS} == {k: want[k] for k in tables.COUNT_KEYS}
        for key in tables.METRIC_KEYS:  # image AUC from histograms: same bins, any order of blocks
            assert got[key] == pytest.approx(want[key] if key != "image_auc" else hist[key], rel=1e-9), (got, key)


def _sharded_store(data, root):
    """set_a as a store whose manifest is two shards: 3 manipulated, 1 authentic, 1 with boxes but no mask
    (skipped), 1 of the train split, and one line that is not a record."""
    shutil.copytree(data["sets"]["set_a"].parent, root, ignore=shutil.ignore_patterns("*.json"))
    records = [{"id": f"im{i}", "image": f"Tp/im{i}.png", "boxes": [[10, 5, 30, 25]], "mask": f"Gt/im{i}.png",
                "split": "test"} for i in range(3)]
    records += [{"id": "au0", "image": "Au/au0.png", "boxes": [], "split": "test"},
                {"id": "nomask", "image": "Tp/im0.png", "boxes": [[1, 1, 9, 9]], "split": "test"},
                {"id": "tr", "image": "Tp/im1.png", "boxes": [], "split": "train"}]
    (root / "manifest").mkdir()
    (root / "manifest" / "shard-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    (root / "manifest" / "shard-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[3:]) + "{oops\n")
    return root


def test_evaluation_streams_a_sharded_store_without_rows_on_the_driver(data, local_ray, tmp_path, monkeypatch,
                                                                        caplog):
    import ray

    store, out = _sharded_store(data, tmp_path / "store"), tmp_path / "eval_store"
    reads = []
    read_text = ray.data.read_text
    monkeypatch.setattr(ray.data, "read_text", lambda paths, **kw: reads.append(sorted(paths)) or read_text(paths, **kw))

    def refuse(*args, **kwargs):
        raise AssertionError("the driver asked for the rows")

    for name in ("take_all", "take", "take_batch", "iter_rows", "iter_batches", "to_pandas", "count"):
        monkeypatch.setattr(ray.data.Dataset, name, refuse)
    monkeypatch.setattr(ray.data, "from_items", refuse)
    config = evaluate.EvalConfig(model=str(data["ckpt"]), datasets=[f"store={store}"], degrade=["jpeg:70"],
                                 out=str(out), num_workers=1, cpus_per_worker=0.5, batch_size=4, mlflow=False,
                                 max_reject_rate=0.25)
    result = evaluate.run_evaluation(config)
    monkeypatch.undo()
    assert reads == [[str(store / "manifest" / "shard-0.jsonl"), str(store / "manifest" / "shard-1.jsonl")]]
    by = {(r["name"], r["degradation"]): r for r in result["table"]}
    for deg in ("none", "jpeg:70"):
        assert (by[("store", deg)]["n_images"], by[("store", deg)]["n_authentic"]) == (4, 1)
    assert (result["images"], result["failed"]) == (10, 2)  # the bad line: one reject per degradation
    assert "1 record(s) with boxes but no GT mask skipped" in caplog.text
    rows = list(tables.read_per_image(str(out)))
    assert sorted(r["id"] for r in rows) == sorted(["im0", "im1", "im2", "au0"] * 2)
    rejected = [json.loads(line) for p in (out / "rejects").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(rejected) == 2 and all(r["reason"].startswith("bad record") and r["stage"] == "evaluate"
                                      for r in rejected)
    # --limit per set, a store and an IMDL-BenCo list together; a rerun replaces the tables
    again = evaluate.run_evaluation(config.replace(datasets=[f"store={store}", f"set_b={data['sets']['set_b']}"],
                                                   degrade=[], limit=2, max_reject_rate=0.5))
    by = {r["name"]: r for r in again["table"]}
    assert again["images"] == 4 and by["set_b"]["n_images"] == 2 and by["store"]["n_images"] <= 2
    assert len(list(tables.read_per_image(str(out)))) == by["store"]["n_images"] + 2


def test_batch_prediction_job_on_ray(data, local_ray, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(data["sets"]["set_b"].parent / "Tp", store / "Tp")
    manifest.write_manifest([{"id": f"im{i}", "image": f"Tp/im{i}.png", "boxes": [], "split": "test"} for i in range(3)]
                            + [{"id": "bad", "image": "Tp/missing.png", "boxes": [], "split": "test"}],
                            str(store / "manifest.jsonl"))
    with open(store / "manifest.jsonl", "a") as f:
        f.write("this line is not a record\n")
    out = tmp_path / "pred_out"
    config = predict.PredictConfig(model=str(data["ckpt"]), store=str(store), out=str(tmp_path / "strict"),
                                   num_workers=1, cpus_per_worker=0.5)
    with pytest.raises(RejectRateError, match="2 of 5"):  # 40% rejected > the default 5%: fails, after writing
        predict.run_predict(config)
    assert len(list(predict.read_predictions(str(tmp_path / "strict")))) == 3
    summary = predict.run_predict(config.replace(out=str(out), max_reject_rate=0.5))
    assert summary["predicted"] == 3 and summary["rejected"] == 2
    rows = sorted(predict.read_predictions(str(out)), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == ["im0", "im1", "im2"]
    for r in rows:
        mask = imageio.load_mask(str(out / r["pred_mask"]))
        assert mask.shape == (r["height"], r["width"])
        assert (out / r["overlay"]).exists()
    rejected = "".join(p.read_text() for p in (out / "rejects").glob("*.jsonl"))
    assert "missing" in rejected and "bad record" in rejected
    assert json.loads((out / "config.json").read_text())["cpus_per_worker"] == 0.5
    again = predict.run_predict(config.replace(out=str(out), max_reject_rate=0.5))  # a rerun replaces the tables
    assert again["predicted"] == 3 and len(list(predict.read_predictions(str(out)))) == 3


def test_mlflow_registered_model_results_and_report(data, tmp_path):
    """One sqlite tracking store: load models:/name@alias, log the results table and the report."""
    from bpiml.evaluation import report
    from bpiml.runtime import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from bpiml.model import checkpoint

    model = inference.load_model(str(data["ckpt"]))
    run_id = tracking.start_or_resume_run(uri, "bpiml-test", run_name="train")
    folder = checkpoint.export(model, tmp_path / "export")
    model_uri, _ = tracking.register_model_folder(uri, run_id, str(folder), "bpiml-test-student", "champion")
    assert inference.check_model(model_uri, uri) == uri
    with pytest.raises(FileNotFoundError, match="not found"):
        inference.check_model("models:/no-such-model@champion", uri)
    loaded = inference.load_model(model_uri, tracking_uri=uri)
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(inference.predict_probs(loaded, image), inference.predict_probs(model, image), atol=1e-5)

    table = tables.aggregate(
        [{"set": "a", "degradation": "jpeg:70", "manipulated": True, "score": 0.9, "f1": 0.5, "iou": 0.25,
          "auc": 0.75, "error": ""}], ["a"], {}, ["jpeg:70"])
    config = evaluate.EvalConfig(model=model_uri, datasets=["a=x.json"], out=str(tmp_path), tracking_uri=uri,
                                 experiment="bpiml-eval-test")
    eval_run = tables.log_to_mlflow(config, table, {"results.txt": tables.format_table(table)}, ["a"])
    client = tracking.client(uri)
    logged = client.get_run(eval_run).data.metrics
    assert logged["eval/a/jpeg_70/pixel_f1"] == 0.5 and logged["eval/average/jpeg_70/pixel_iou"] == 0.25
    assert [f.path for f in client.list_artifacts(eval_run, "evaluation")] == ["evaluation/results.txt"]
    assert tables.log_to_mlflow(config.replace(tracking_uri="", experiment=None, mlflow=False), table, {}, ["a"]) is None

    samples = [{"id": "s", "image": image, "pred": np.zeros((30, 50), bool), "gt": np.ones((30, 50), bool)}]
    report.build_report(samples, {}, {}, str(tmp_path / "report"), mlflow_run_id=eval_run, tracking_uri=uri)
    names = {f.path for f in client.list_artifacts(eval_run, "report")}
    assert {"report/index.html", "report/grid.png", "report/samples"} <= names


def test_a_retried_write_is_counted_once(local_ray, tmp_path):
    """Ray retries a write task whose worker died: it writes the same content-named parts again, and
    its counts and statistics must then be taken once, as the files hold them once."""
    import pyarrow as pa

    from bpiml.data import parts
    from bpiml.evaluation.sink import table_sink
    from bpiml.runtime.counter import start_counter

    counter, tally = start_counter(), start_counter()
    sink = table_sink(str(tmp_path), "per_image", "evaluate", "run1", counter, 4,
                      tallies=[(tally, lambda rows: {"n": float(len(rows))})])
    block = pa.table({"id": ["a", "b", "c"], "image": ["a.png", "b.png", "c.png"], "f1": [0.5, 0.25, 0.0],
                      "error": ["", "", "decode: truncated"]})
    other = pa.table({"id": ["d"], "image": ["d.png"], "f1": [1.0], "error": [""]})
    for blocks in ([block], [block], [other]):  # the first block written twice: a retry
        sink.write(blocks, None)
    counts = local_ray.get(counter.get.remote())
    assert (counts["images"], counts["written"], counts["rejected"]) == (4, 3, 1)
    assert local_ray.get(tally.get.remote()) == {"n": 4.0}
    assert sorted(r["id"] for r in parts.iter_table(str(tmp_path / "per_image"))) == ["a", "b", "d"]
