"""Teacher confidence: per box and per image in records, its summary, and the run in MLflow (issue 31 part A)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bpiml.pseudolabel.confidence import ConfidenceStats
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.plan import _plan_id
from bpiml.pseudolabel.rows import fingerprints, plan_row
from bpiml.pseudolabel.stages import output_record
from bpiml.pseudolabel.store import mask_path
from bpiml.pseudolabel.teachers import build_teacher
from bpiml.pseudolabel.teachers.base import Labels, image_confidence
from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_sam_checkpoint(str(tmp_path_factory.mktemp("sam") / "tiny_sam.pt"), seed=3)


def _disc_image(h: int = 160, w: int = 240, seed: int = 0) -> np.ndarray:
    """Grey noise with a red disc at (row 80, col 70), radius 30: a clear object on its left, flat noise on the right."""
    rng = np.random.default_rng(seed)
    image = rng.normal(120, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    image[(yy - 80) ** 2 + (xx - 70) ** 2 < 30 ** 2] = (230, 40, 40)
    return image


OBJECT_BOX = [35.0, 45.0, 105.0, 115.0]  # around the disc
FLAT_BOX = [150.0, 40.0, 220.0, 110.0]  # on the noise only


def test_image_confidence_is_the_min_over_boxes_with_one() -> None:
    assert image_confidence([0.9, 0.3, 0.7]) == 0.3
    assert image_confidence([None, 0.8]) == 0.8
    assert image_confidence([None, None]) is None and image_confidence([]) is None
    labels = Labels(np.zeros((2, 2), bool), [0.4, 0.6], {"sam_pred_iou": [0.5, 0.6]})
    assert labels.record_fields() == {"confidence": 0.4, "box_confidence": [0.4, 0.6], "sam_pred_iou": [0.5, 0.6]}
    assert Labels(np.zeros((2, 2), bool), [None]).record_fields() == {"confidence": None, "box_confidence": None}


def test_tiny_sam_records_carry_pred_iou_stability_and_confidence(tiny_checkpoint: str) -> None:
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=False, batch_size=2)
    images = [_disc_image(), _disc_image(96, 128, seed=1), _disc_image(64, 64, seed=2)]
    boxes = [np.array([OBJECT_BOX, FLAT_BOX], np.float32), np.array([[10, 10, 90, 80]], np.float32),
             np.zeros((0, 4), np.float32)]
    labels = teacher.label(images, boxes)
    masks = teacher.predict(images, boxes)
    for lab, mask, image_boxes in zip(labels, masks, boxes):
        assert np.array_equal(lab.mask, mask)
        fields = lab.record_fields()
        assert len(fields["box_confidence"]) == len(fields["sam_pred_iou"]) == len(fields["sam_stability"]) == len(image_boxes)
        for conf, iou, stab in zip(fields["box_confidence"], fields["sam_pred_iou"], fields["sam_stability"]):
            assert 0.0 <= iou <= 1.0 and 0.0 <= stab <= 1.0
            assert conf == pytest.approx(iou * stab)
        if len(image_boxes):
            assert fields["confidence"] == min(fields["box_confidence"])
        else:
            assert fields["confidence"] is None and fields["box_confidence"] == []
    assert all(0.0 <= c <= 1.0 for lab in labels for c in lab.box_confidence)

    # into the output record: one entry per box of the record, a dropped (degenerate) box gets null
    row = plan_row(id="a", image="a.png", boxes=[OBJECT_BOX, [5, 5, 5, 9], FLAT_BOX], fingerprint="f", mask_fp="m",
                   teacher_identity="sam-x")
    record = output_record(row, labels[0].mask, teacher.version, None, [], labels[0].record_fields())
    assert record["box_confidence"][1] is None and record["sam_stability"][1] is None
    assert record["box_confidence"][0] == labels[0].box_confidence[0]
    assert record["box_confidence"][2] == labels[0].box_confidence[1]
    assert record["confidence"] == labels[0].confidence


def test_sam_confidence_follows_the_decoder(tiny_checkpoint: str) -> None:
    """The random tiny SAM's logits sit within +-1 and its IoU head is negative (stability and pred IoU 0):
    scale the decoder's outputs to see the numbers move as SAM's would."""
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=False)
    image, boxes = _disc_image(), np.array([OBJECT_BOX, FLAT_BOX], np.float32)
    stabilities = {}
    for scale in (20.0, 2000.0):
        hook = teacher.sam.mask_decoder.register_forward_hook(
            lambda module, args, out, scale=scale: (out[0] * scale, torch.full_like(out[1], 0.8)))
        try:
            (labels,) = teacher.label([image], [boxes])
        finally:
            hook.remove()
        assert labels.extra["sam_pred_iou"] == pytest.approx([0.8, 0.8])
        stabilities[scale] = labels.extra["sam_stability"]
        assert labels.box_confidence == pytest.approx([0.8 * s for s in stabilities[scale]])
    assert all(0.0 < s <= 1.0 for s in stabilities[20.0])
    assert all(b >= a for a, b in zip(stabilities[20.0], stabilities[2000.0]))  # sharper logits: more stable
    assert min(stabilities[2000.0]) > 0.95


def test_fast_and_stock_sam_agree_on_confidence(tiny_checkpoint: str) -> None:
    stock = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=False, batch_size=2)
    fast = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", fast=True, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(180, 240), (256, 128)]] + [_disc_image()]
    boxes = [np.array([[10, 20, 120, 150], [130, 40, 230, 170]], np.float32), np.array([[4, 30, 120, 250]], np.float32),
             np.array([OBJECT_BOX, FLAT_BOX], np.float32)]
    for a, b in zip(fast.label(images, boxes), stock.label(images, boxes)):
        np.testing.assert_allclose(a.extra["sam_pred_iou"], b.extra["sam_pred_iou"], atol=1e-3)
        np.testing.assert_allclose(a.extra["sam_stability"], b.extra["sam_stability"], atol=0.02)
        np.testing.assert_allclose(a.box_confidence, b.box_confidence, atol=0.02)


def test_grabcut_confidence_is_lower_on_a_flat_region_than_on_a_clear_object() -> None:
    image = _disc_image()
    # the scene is what the test claims: a saturated disc inside the object box, only grey noise in the flat box
    assert (image[80, 70] == (230, 40, 40)).all()
    flat = image[40:110, 150:220].reshape(-1, 3).astype(float)
    assert flat.std(axis=0).max() < 15 and abs(flat.mean() - 120) < 3
    teacher = build_teacher("grabcut")
    (both,) = teacher.label([image], [np.array([OBJECT_BOX, FLAT_BOX], np.float32)])
    clear, ambiguous = both.box_confidence
    assert 0.0 <= ambiguous < clear <= 1.0
    assert clear > 0.5 and ambiguous < 0.2
    assert both.confidence == ambiguous  # the image is as weak as its weakest box
    (small,) = teacher.label([image], [np.array([[10, 10, 14, 14]], np.float32)])  # too small for GrabCut
    assert small.box_confidence == [None] and small.confidence is None


def test_box_teacher_has_no_confidence() -> None:
    (labels,) = build_teacher("box").label([_disc_image()], [np.array([OBJECT_BOX], np.float32)])
    assert labels.record_fields() == {"confidence": None, "box_confidence": None}


def test_confidence_stats_histogram_quantiles_and_review_count() -> None:
    values = [0.05, 0.15, 0.15, 0.45, 0.5, 0.55, 0.95, 1.0]
    stats = ConfidenceStats(review_below=0.5)
    for v in values + [None, None]:
        stats.add(v)
    half = ConfidenceStats(0.5)
    for v in values[:3]:
        half.add(v)
    rest = ConfidenceStats.from_counts(0.5, json.loads(json.dumps(ConfidenceStats(0.5).to_counts())))
    for v in values[3:]:
        rest.add(v)
    half.merge(rest)
    for summary in (stats.summary(), half.summary() | {"images_without_confidence": 2}):
        assert summary["images_with_confidence"] == 8 and summary["images_without_confidence"] == 2
        assert summary["histogram"]["counts"] == [1, 2, 0, 0, 1, 2, 0, 0, 0, 2]
        assert summary["below_review"] == 4  # 0.05, 0.15, 0.15, 0.45 (0.5 itself is not below)
        assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-4)
        assert summary["quantiles"]["p50"] == pytest.approx(0.4505, abs=1e-4)  # 4th of 8 values, to one fine bin
        assert summary["quantiles"]["p5"] == pytest.approx(0.0505) and summary["quantiles"]["p95"] == pytest.approx(0.9995)


def test_a_record_written_before_confidence_is_relabeled() -> None:
    record = {"id": "a", "image": "a.png", "boxes": [[1, 1, 9, 9]]}
    fingerprint, mask_fp = fingerprints(record, "grabcut-v2-x")
    old_fingerprint = hashlib.sha256(
        f"grabcut-v2-x\n{json.dumps(record, sort_keys=True)}".encode()).hexdigest()[:32]
    assert fingerprint != old_fingerprint
    row = plan_row(id="a", kind="in", fingerprint=fingerprint, mask_fp=mask_fp)
    old = plan_row(id="a", kind="done", fingerprint=old_fingerprint, part="p", pseudo_mask=mask_path("a", mask_fp))
    counts = dict.fromkeys(("input", "skipped", "new", "relabel", "duplicate", "invalid"), 0.0)
    planned = _plan_id([row, old], counts)
    assert counts["relabel"] == 1 and planned.label == [row] and not planned.rejects
    assert [s["fingerprint"] for s in planned.supersede] == [old_fingerprint]
    assert not planned.supersede[0]["delete_mask"]  # same mask file, kept


def test_review_below_is_checked() -> None:
    with pytest.raises(ValueError, match="review_below"):
        PseudoLabelConfig(review_below=1.5).validate()


# --- one pipeline run: summary.json and the MLflow run ------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _store(root: Path) -> None:
    """Four images: two with a box on the disc, one with a box on flat noise, one authentic."""
    root.mkdir(parents=True)
    lines = []
    for i, boxes in enumerate([[OBJECT_BOX], [OBJECT_BOX, FLAT_BOX], [FLAT_BOX], []]):
        (root / f"im{i}.png").write_bytes(_png(_disc_image(seed=i)))
        lines.append(json.dumps({"id": f"im{i}", "image": f"im{i}.png", "boxes": boxes, "split": "train"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_summary_and_mlflow_run_of_a_small_grabcut_run(tmp_path: Path, ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    from bpiml.data.manifest import SHARDS_DIR
    from bpiml.pseudolabel.job import run_pseudolabel
    from bpiml.review.page import write_page

    _store(tmp_path / "store")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = PseudoLabelConfig(store=str(tmp_path / "store"), out=str(tmp_path / "out"), teacher="grabcut",
                            num_workers=1, part_rows=2, batch_size=2, review_below=0.3, experiment="pseudo-test",
                            tracking_uri=tracking)
    summary = run_pseudolabel(cfg, review_page=write_page)  # what jobs/pseudolabel.py passes (next test)

    records = [json.loads(line) for f in sorted((tmp_path / "out" / SHARDS_DIR).glob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    by_id = {r["id"]: r for r in records}
    assert by_id["im3"]["confidence"] is None and by_id["im3"]["box_confidence"] == []
    assert by_id["im1"]["confidence"] == min(by_id["im1"]["box_confidence"])
    assert by_id["im0"]["confidence"] > by_id["im2"]["confidence"]
    values = [r["confidence"] for r in records if r["confidence"] is not None]
    confidence = json.loads((tmp_path / "out" / "summary.json").read_text())["confidence"]
    assert confidence == summary["confidence"]
    assert confidence["images_with_confidence"] == 3 and confidence["images_without_confidence"] == 1
    assert confidence["below_review"] == sum(v < 0.3 for v in values)
    assert sum(confidence["histogram"]["counts"]) == 3
    assert confidence["mean"] == pytest.approx(np.mean(values), abs=1e-4)

    client = MlflowClient(tracking_uri=tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("pseudo-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["teacher"] == "grabcut" and run.data.params["review_below"] == "0.3"
    assert run.data.metrics["labeled_this_run"] == 4 and run.data.metrics["images_per_second"] > 0
    assert run.data.metrics["confidence_below_review"] == confidence["below_review"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confidence_histogram.png", "summary.json", "review_page"} <= artifacts
    page = {a.path for a in client.list_artifacts(run.info.run_id, "review_page")}
    assert "review_page/index.html" in page
    figure = client.download_artifacts(run.info.run_id, "confidence_histogram.png", str(tmp_path))
    assert Image.open(figure).size[0] > 100


def test_the_job_hands_the_review_page_writer_to_the_run(monkeypatch) -> None:
    """`review/` sits above `pseudolabel/`: the entry point passes the page writer in (docs/architecture.md)."""
    import importlib.util

    from bpiml.pseudolabel import job
    from bpiml.review.page import write_page

    path = Path(__file__).resolve().parents[1] / "jobs" / "pseudolabel.py"
    spec = importlib.util.spec_from_file_location("bpiml_job_pseudolabel", path)
    assert spec is not None and spec.loader is not None
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    passed = {}

    def run_pseudolabel(cfg: PseudoLabelConfig, **kwargs: object) -> dict:
        passed.update(kwargs)
        raise InterruptedError("stop before any work")

    monkeypatch.setattr(entry, "setup_console", lambda args: None)
    monkeypatch.setattr(job, "run_pseudolabel", run_pseudolabel)
    with pytest.raises(InterruptedError):
        entry.main(*entry.parse_args(["--store", "s", "--out", "o", "--experiment", "e"]))
    assert passed == {"review_page": write_page}


def test_an_unreachable_tracking_server_fails_before_any_labeling(tmp_path: Path, monkeypatch) -> None:
    from bpiml.pseudolabel.job import run_pseudolabel

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not after MLflow's backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    _store(tmp_path / "store")
    cfg = PseudoLabelConfig(store=str(tmp_path / "store"), out=str(tmp_path / "out"), teacher="box",
                            experiment="pseudo-test", tracking_uri="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ValueError, match="--experiment pseudo-test: cannot reach MLflow at http://127.0.0.1:9"):
        run_pseudolabel(cfg)
    assert not (tmp_path / "out" / "manifest").exists()  # nothing was labeled
