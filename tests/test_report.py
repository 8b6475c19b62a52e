"""Pseudo-mask audit values, the HTML/PNG report, and the page rendered in headless Chromium."""

import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from bpiml.data import imageio, manifest, parts, visual
from bpiml.data.naming import file_stem
from bpiml.evaluation import audit, cli, report, report_html, tables
from bpiml.pseudolabel.store import source_reference, write_index

H, W = 32, 40


def _gt(i):
    mask = np.zeros((H, W), bool)
    mask[5:15, 5 + i : 15 + i] = True  # 10x10 square
    return mask


@pytest.fixture()
def stores(tmp_path):
    """An input store (4 images with GT) and its pseudo-labeled store: 2 by 'sam' (exact), 2 by 'box' (IoU 0.5)."""
    src, out = tmp_path / "src", tmp_path / "pseudo"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    (out / "pseudo").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records, pseudo_records = [], []
    for i in range(4):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        (src / "images" / f"im{i}.png").write_bytes(imageio.encode_image(image, "png"))
        (src / "masks" / f"im{i}.png").write_bytes(imageio.encode_mask_png(_gt(i)))
        teacher = "sam" if i < 2 else "box"
        pseudo = _gt(i).copy()
        if teacher == "box":
            pseudo[15:25, 5 + i : 15 + i] = True  # 10x20: IoU 100/200
        (out / "pseudo" / f"im{i}.png").write_bytes(imageio.encode_mask_png(pseudo))
        rec = {"id": f"im{i}", "image": f"images/im{i}.png", "boxes": [[5 + i, 5, 15 + i, 15]],
               "mask": f"masks/im{i}.png", "split": "test"}
        records.append(rec)
        pseudo_records.append({**rec, "pseudo_mask": f"pseudo/im{i}.png", "teacher": teacher})
    pseudo_records.append({"id": "nogt", "image": "images/im0.png", "boxes": [[1, 1, 5, 5]], "mask": None,
                           "split": "train", "pseudo_mask": "pseudo/im0.png", "teacher": "sam"})
    manifest.write_manifest(records, str(src))
    manifest.write_manifest(pseudo_records, str(out))
    write_index(str(out), {"complete": True, "source": source_reference(str(src), str(out)),
                           "records": len(pseudo_records)})  # the input store, named once
    return {"src": src, "pseudo": out}


def test_audit_per_teacher(stores, capsys):
    result = audit.audit_pseudo_labels(str(stores["pseudo"]), tolerance=1.0, worst_k=1)
    assert result["audited"] == 4 and result["skipped_no_gt"] == 1 and not result["failed"]
    sam, box = result["teachers"]["sam"], result["teachers"]["box"]
    assert sam["n"] == 2 and sam["iou_mean"] == 1.0 and sam["boundary_f1_median"] == 1.0
    assert box["iou_mean"] == pytest.approx(0.5) and box["iou_median"] == pytest.approx(0.5)
    assert 0.0 < box["boundary_f1_mean"] < 1.0
    assert box["iou_histogram"] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0] and sum(sam["iou_histogram"]) == 2
    assert sam["iou_histogram"][-1] == 2  # IoU 1.0 falls in the last bin
    assert len(box["worst"]) == 1 and result["all"]["iou_mean"] == pytest.approx(0.75)
    assert audit.cli_audit(["--store", str(stores["pseudo"]), "--worst-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "sam" in printed and "0.5000" in printed and "worst 2 for box" in printed


def test_audit_without_gt_is_an_error(tmp_path):
    manifest.write_manifest([{"id": "a", "image": "a.png", "boxes": [], "pseudo_mask": "p.png"}], str(tmp_path))
    with pytest.raises(ValueError, match="no record has both"):
        audit.audit_pseudo_labels(str(tmp_path))


def test_svg_chart_and_table():
    svg = report_html.svg_chart({"train": [1.0, 0.5, 0.25], "val": [1.2, 0.9, float("nan"), 0.8]}, "loss")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "loss" in svg
    assert "no data" in report_html.svg_chart({"x": []}, "empty")
    table = report_html.html_table([{"name": "a<b", "f1": 0.5, "auc": math.nan}])
    assert "a&lt;b" in table and "0.5000" in table and "<td>-</td>" in table


def _fake_evaluation(eval_dir, src):
    """An evaluation output as `bpiml.evaluation.evaluate` writes it, for 4 images of the input store."""
    (eval_dir / "preds" / "s").mkdir(parents=True)
    rows = []
    for i in range(4):
        pred = np.zeros((H, W), bool)
        pred[5:15, 5 : 15 + 2 * i] = True
        (eval_dir / "preds" / "s" / f"im{i}.png").write_bytes(imageio.encode_mask_png(pred))
        from bpiml.data import metrics

        rows.append({"set": "s", "degradation": "none", "id": f"im{i}", "image": str(src / "images" / f"im{i}.png"),
                     "mask": str(src / "masks" / f"im{i}.png"), "manipulated": True, "score": 0.9,
                     "f1": metrics.pixel_f1(pred, _gt(i)), "iou": metrics.pixel_iou(pred, _gt(i)), "auc": None,
                     "pred_mask": f"preds/s/im{i}.png"})
    parts.write_part(str(eval_dir / tables.PER_IMAGE_DIR), "20261203_000000.test", rows)
    table = [{"kind": "set", "name": "s", "degradation": "none", "n_images": 4, "n_manipulated": 4, "n_authentic": 0,
              "pixel_f1": 0.7, "pixel_iou": 0.6, "pixel_auc": None, "image_auc": None, "image_bacc": None}]
    (eval_dir / "results.json").write_text(json.dumps({"table": table}))
    (eval_dir / "curves.json").write_text(json.dumps({"loss": {"train": [1.0, 0.6, 0.4], "val": [1.1, 0.8, 0.7]},
                                                       "val_f1": [0.1, 0.3, 0.5]}))


def test_build_report_orders_worst_first(tmp_path):
    image = np.full((H, W, 3), 128, np.uint8)
    samples = [{"id": "good", "image": image, "gt": _gt(0), "pred": _gt(0)},
               {"id": "bad", "image": image, "gt": _gt(0), "pred": _gt(9), "boxes": [[5, 5, 15, 15]]},
               {"id": "authentic", "image": image, "gt": None, "pred": None}]
    index = report.build_report(samples, {"t": [{"a": 1.0}]}, {"loss": [3, 2, 1]}, str(tmp_path / "r"))
    page = open(index).read()
    order = [page.index(f'alt="{name}"') for name in ("bad", "good", "authentic")]
    assert order == sorted(order)
    assert sorted(os.listdir(tmp_path / "r" / "samples")) == [f"000_{file_stem('bad')}.png", f"001_{file_stem('good')}.png",
                                                               f"002_{file_stem('authentic')}.png"]
    grid_png = imageio.load_image(str(tmp_path / "r" / "grid.png"))[0]
    strip = imageio.load_image(str(tmp_path / "r" / "samples" / f"000_{file_stem('bad')}.png"))[0]
    assert strip.shape[0] == visual.PANEL_HEIGHT + visual.LABEL_HEIGHT and grid_png.shape[0] > 3 * strip.shape[0]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var out = document.createElement('div');
  out.id = 'render-check';
  out.setAttribute('data-images', imgs.length);
  out.setAttribute('data-loaded', imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  out.setAttribute('data-tables', document.querySelectorAll('table').length);
  out.setAttribute('data-charts', document.querySelectorAll('svg.chart polyline').length);
  document.body.appendChild(out);
});
</script></body>"""


def test_cli_report_renders_in_headless_chromium(stores, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium) - cannot render the report")
    eval_dir = tmp_path / "eval"
    _fake_evaluation(eval_dir, stores["src"])
    out = tmp_path / "report"
    assert cli.cli_report(["--eval", str(eval_dir), "--store", str(stores["pseudo"]), "--out", str(out),
                              "--curves", str(eval_dir / "curves.json"), "--max-samples", "3"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and "pseudo-mask audit" in page
    # worst first: im3 has the widest over-prediction, so the lowest F1
    assert re.findall(r'alt="(im\d)"', page) == ["im3", "im2", "im1"]
    (out / "check.html").write_text(page.replace("</body>", _CHECK_SCRIPT))
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
         (out / "check.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'<div id="render-check"([^>]*)>', proc.stdout)
    assert match, f"no render check in the DOM (rc={proc.returncode}): {proc.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', match.group(1)))
    assert attrs == {"images": "3", "loaded": "3", "tables": "2", "charts": "3"}, attrs
