"""Review of pseudo masks (issue 31 B): Label Studio export and import (RLE by label-studio-sdk), every kind of
bad import leaving the store unchanged, undo, the static page in headless Chromium, and training that honours it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from review_fixtures import (
    HEIGHT,
    WIDTH,
    annotated,
    brush,
    choice,
    gt_square,
    make_review_store,
)
from test_report import _CHECK_SCRIPT

from bpiml.data import imageio
from bpiml.pseudolabel import reviews
from bpiml.review import export, importer, rle
from bpiml.review.cli import cli_review, undo
from bpiml.review.page import write_page
from bpiml.train.data import FILTERED, REJECTED, sample_rows
from bpiml.train.loop import mask_loss


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_store(tmp_path_factory.mktemp("review-base"))


@pytest.fixture()
def store(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of the store, exported once (tasks.json beside it)."""
    shutil.copytree(base.parent, tmp_path / "s")
    pseudo = tmp_path / "s" / "pseudo"
    export.export_tasks(str(pseudo), str(tmp_path / "export"), document_root=str(tmp_path))
    return pseudo


def _tasks(store: Path) -> dict[str, dict]:
    tasks = json.loads((store.parent.parent / "export" / "tasks.json").read_text())
    return {t["data"]["bpiml_id"]: t for t in tasks}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_export(path: Path, tasks: list[dict]) -> str:
    path.write_text(json.dumps(tasks))
    return str(path)


def _reviewed_export(store: Path, tmp_path: Path) -> str:
    """rec4 corrected to its full square, rec1 rejected, rec3 accepted (as a reviewer in Label Studio would)."""
    t = _tasks(store)
    return _write_export(tmp_path / "ls-export.json", [
        annotated(t["rec4"], 1, [brush(gt_square(4)), choice("accept")]),
        annotated(t["rec1"], 2, [choice("reject")]),
        annotated(t["rec3"], 3, [choice("accept")]),
        {"id": 4, "data": t["rec0"]["data"], "annotations": []}])  # not reviewed yet


def test_export_ranks_by_confidence_and_encodes_boxes_and_mask(store: Path, tmp_path: Path) -> None:
    tasks = json.loads((tmp_path / "export" / "tasks.json").read_text())
    assert [t["data"]["bpiml_id"] for t in tasks] == ["rec4", "rec1", "rec3", "rec5", "rec0", "rec2"]  # null last
    sid = reviews.store_id(str(store))
    assert {t["data"]["bpiml_store"] for t in tasks} == {sid}
    first = tasks[0]
    assert first["predictions"][0]["score"] == pytest.approx(0.05)
    assert first["data"]["image"] == "/data/local-files/?d=s/input/images/rec4.png"
    box, mask = first["predictions"][0]["result"]
    assert box["type"] == "rectanglelabels" and box["value"]["x"] == pytest.approx(100 * 16 / WIDTH)
    assert box["value"]["height"] == pytest.approx(100 * 16 / HEIGHT)
    pseudo = imageio.load_mask(str(store / "pseudo" / "rec4.png"))
    assert (rle.decode(mask["value"]["rle"], WIDTH, HEIGHT) == pseudo).all()
    tags = {e.tag for e in ET.fromstring((tmp_path / "export" / "config.xml").read_text()).iter()}
    assert {"Image", "RectangleLabels", "BrushLabels", "Choices"} <= tags
    below = export.export_tasks(str(store), str(tmp_path / "below"), below=0.5, document_root=str(tmp_path))
    assert below["tasks"] == 2  # 0.05 and 0.2; the null one is left out
    with pytest.raises(ValueError, match="outside --document-root"):
        export.export_tasks(str(store), str(tmp_path / "x"), document_root=str(tmp_path / "export"))


def test_import_records_decisions_and_training_applies_them(store: Path, tmp_path: Path) -> None:
    path = _reviewed_export(store, tmp_path)
    log = importer.import_export(str(store), path)
    assert log["counts"] == {"accepted": 1, "corrected": 1, "rejected": 1} and not log["rejects"]
    decisions = reviews.latest_decisions(str(store))
    assert {k: d["status"] for k, d in decisions.items()} == {"rec4": "corrected", "rec1": "rejected",
                                                               "rec3": "accepted"}
    assert decisions["rec4"]["by"] == "rev@example.com" and decisions["rec4"]["at"].startswith("2026-12-05T10:00")
    corrected = imageio.load_mask(str(store / decisions["rec4"]["reviewed_mask"]))
    assert (corrected == gt_square(4)).all() and (store / "pseudo" / "rec4.png").exists()  # the original stays
    rows = _rows(store, decisions)
    assert rows["rec1"]["reason"] == REJECTED and rows["rec1"]["split"] == ""
    assert rows["rec4"]["target"].endswith(decisions["rec4"]["reviewed_mask"]) and rows["rec4"]["review"] == "corrected"
    assert rows["rec3"]["target"].endswith("pseudo/rec3.png")
    # the same export again: nothing changes
    before = _files(store)
    assert importer.import_export(str(store), path)["already_imported"]
    assert cli_review(["import", "--store", str(store), "--from", path]) == 0
    assert _files(store) == before


def _rows(store: Path, decisions: dict, min_confidence: float = 0.0) -> dict[str, dict]:
    lines = (store / "manifest" / "shard-r1-0.jsonl").read_text().splitlines()
    batch = sample_rows({"text": lines}, root=str(store), source=str(store.parent / "input"), supervision="pseudo",
                        train_split="train", val_split="val", decisions=decisions, min_confidence=min_confidence)
    return {str(i): {k: batch[k][n] for k in batch} for n, i in enumerate(batch["id"])}


def test_min_confidence_and_weights(store: Path) -> None:
    rows = _rows(store, {"rec1": {"status": "accepted", "by": "a", "at": "2026-01-01", "source": "x"}}, 0.6)
    assert rows["rec4"]["reason"] == FILTERED and rows["rec3"]["reason"] == FILTERED  # 0.05, 0.5 < 0.6
    assert rows["rec1"]["split"] == "train"  # 0.2, but a human accepted it
    assert rows["rec2"]["split"] == "train"  # null confidence: kept
    assert rows["rec0"]["weight"] == pytest.approx(0.9) and rows["rec2"]["weight"] == 1.0
    assert rows["rec1"]["weight"] == 1.0  # reviewed
    logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    plain = mask_loss(logits, target)
    assert mask_loss(logits, target, weight=torch.tensor([1.0, 1.0])) == pytest.approx(float(plain))
    assert mask_loss(logits, target, weight=torch.tensor([0.5, 0.0])) == pytest.approx(float(plain) * 0.25)


@pytest.mark.parametrize("fault", ["other_store", "unknown_id", "wrong_size", "bad_rle", "relabeled", "no_decision"])
def test_bad_imports_leave_the_store_unchanged(store: Path, tmp_path: Path, fault: str) -> None:
    t = _tasks(store)
    good = annotated(t["rec3"], 3, [choice("accept")])
    task = annotated(t["rec4"], 1, [brush(gt_square(4)), choice("accept")])
    if fault == "other_store":
        task["data"] = {**task["data"], "bpiml_store": "another-store"}
    elif fault == "unknown_id":
        task["data"] = {**task["data"], "bpiml_id": "nobody"}
    elif fault == "wrong_size":
        task["annotations"][0]["result"] = [brush(np.zeros((HEIGHT, WIDTH + 2), bool), WIDTH + 2, HEIGHT)]
    elif fault == "bad_rle":
        task["annotations"][0]["result"][0]["value"]["rle"] = [1, 2, 3]
    elif fault == "relabeled":
        task["data"] = {**task["data"], "bpiml_fingerprint": "an older one"}
    else:
        task["annotations"][0]["result"] = []
    path = _write_export(tmp_path / f"{fault}.json", [good, task])
    before = _files(store)
    expected = {"other_store": "another-store", "unknown_id": "no record 'nobody'", "wrong_size": "is 50x40",
                "bad_rle": "brush rle", "relabeled": "pseudo-labeled again", "no_decision": "neither a decision"}[fault]
    with pytest.raises(ValueError, match=expected):
        importer.import_export(str(store), path)
    assert _files(store) == before
    assert cli_review(["import", "--store", str(store), "--from", path]) == 2
    assert _files(store) == before
    if fault != "other_store":  # --keep-going imports the good task and lists the bad one
        log = importer.import_export(str(store), path, keep_going=True)
        assert log["counts"]["accepted"] == 1 and len(log["rejects"]) == 1 and expected in log["rejects"][0]["reason"]


def test_latest_decision_wins_and_undo_returns_to_the_pseudo_mask(store: Path, tmp_path: Path) -> None:
    t = _tasks(store)
    importer.import_export(str(store), _reviewed_export(store, tmp_path))
    newer = _write_export(tmp_path / "newer.json", [annotated(t["rec1"], 2, [choice("accept")],
                                                              at="2026-12-06T09:00:00Z", annotation_id=9)])
    importer.import_export(str(store), newer)
    assert reviews.latest_decisions(str(store))["rec1"]["status"] == "accepted"
    undo(str(store), ["rec4"], "tester")
    assert "rec4" not in reviews.latest_decisions(str(store))
    assert _rows(store, reviews.latest_decisions(str(store)))["rec4"]["target"].endswith("pseudo/rec4.png")
    with pytest.raises(ValueError, match="no record"):
        undo(str(store), ["nobody"], "tester")


def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


def test_review_page_renders_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium) - cannot render the page")
    importer.import_export(str(store), _reviewed_export(store, tmp_path))
    pages = write_page(str(store), str(tmp_path / "page"), per_page=4)
    assert [Path(p).name for p in pages] == ["index.html", "page-2.html"]
    first = Path(pages[0]).read_text()
    assert re.findall(r'alt="(rec\d)"', first) == ["rec4", "rec1", "rec3", "rec5"]
    assert "review: corrected" in first and "confidence 0.0500" in first
    check = tmp_path / "page" / "check.html"
    check.write_text(first.replace("</body>", _CHECK_SCRIPT))
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                          check=False, capture_output=True, text=True, timeout=120)
    match = re.search(r'<div id="render-check"([^>]*)>', proc.stdout)
    assert match, f"no render check in the DOM (rc={proc.returncode}): {proc.stderr[-2000:]}"
    assert dict(re.findall(r'data-(\w+)="(\d+)"', match.group(1)))["loaded"] == "4"
    thumb = imageio.load_image(str(tmp_path / "page" / "thumbs" / "rec4-a872d19157c2.jpg"))[0]
    assert thumb.shape[0] == 160


def test_an_import_killed_half_way_is_finished_by_running_it_again(store: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _reviewed_export(store, tmp_path)
    written = []

    def dies_after_one(root: str, decision: dict) -> str:
        if written:
            raise KeyboardInterrupt  # the import is killed after its first decision
        written.append(real(root, decision))
        return written[-1]

    real = reviews.write_decision
    monkeypatch.setattr(reviews, "write_decision", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        importer.import_export(str(store), path)
    monkeypatch.setattr(reviews, "write_decision", real)
    assert len(list((store / "review" / "decisions").iterdir())) == 1
    log = importer.import_export(str(store), path)
    assert not log["already_imported"] and sorted(log["decisions"]) == sorted(
        str(p.relative_to(store)) for p in (store / "review" / "decisions").iterdir())  # 3 files, none twice
    assert len(log["decisions"]) == 3
