"""IMDL-BenCo and COCO importers on tiny generated fixtures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bpiml.data.imageio import encode_image, encode_mask_png
from bpiml.data.importers.cli import cli_import_coco, cli_import_imdl
from bpiml.data.importers.coco import import_coco
from bpiml.data.importers.imdl import import_imdl
from bpiml.data.importers.summary import unique_ids
from bpiml.data.manifest import image_uri, mask_uri, read_manifest
from bpiml.data.naming import file_stem
from bpiml.data.splits import assign_splits, scene_key


def _img(path, w=40, h=30):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_image(np.full((h, w, 3), 128, np.uint8)))


def _mask(path, rects, w=40, h=30):
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = True
    with open(path, "wb") as f:
        f.write(encode_mask_png(m))


@pytest.fixture
def imdl(tmp_path):
    """Tp (3 forgeries, one with a missing mask, one with a bad mask), Au (2 authentic), Gt masks."""
    root = tmp_path / "data"
    for name in ["im1_t", "im1_out_r90_im1", "im3_t", "im5_t", "im5_x"]:
        _img(str(root / "Tp" / f"{name}.jpg"))
    for name in ["d0_im1", "d0_im7"]:
        _img(str(root / "Au" / f"{name}.jpg"))
    os.makedirs(root / "Gt")
    _mask(str(root / "Gt" / "im1_t_gt.png"), [(2, 2, 10, 10), (14, 2, 20, 8)])
    _mask(str(root / "Gt" / "im1_out_r90_im1_gt.png"), [(5, 5, 25, 25)])
    (root / "Gt" / "im5_t_gt.png").write_bytes(b"garbage")
    _mask(str(root / "Gt" / "im5_x_gt.png"), [(0, 0, 5, 5)], w=20)  # wrong size
    index = [["Tp/im1_t.jpg", "Gt/im1_t_gt.png"], ["Tp/im1_out_r90_im1.jpg", "Gt/im1_out_r90_im1_gt.png"],
             ["Tp/im3_t.jpg", "Gt/im3_t_gt.png"], ["Tp/im5_t.jpg", "Gt/im5_t_gt.png"],
             ["Tp/im5_x.jpg", "Gt/im5_x_gt.png"],
             ["Au/d0_im1.jpg", "Negative"], ["Au/d0_im7.jpg", "Negative"], ["Au/missing.jpg", "Negative"], [1, 2],
             ["Tp/im1_t.jpg", "Gt/im1_t_gt.png"], ["Au/d0_im7.jpg", "Gt/im1_t_gt.png"]]
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_imdl_next_to_index(imdl):
    summary = import_imdl(str(imdl / "index.json"), str(imdl), merge_distance=-1)
    records = {r.id: r for r in read_manifest(str(imdl))}
    assert sorted(records) == ["d0_im1", "d0_im7", "im1_out_r90_im1", "im1_t"]
    t = records["im1_t"]
    assert t.image == "Tp/im1_t.jpg" and t.mask == "Gt/im1_t_gt.png"
    assert t.boxes == [[2, 2, 10, 10], [14, 2, 20, 8]]
    assert records["d0_im1"].boxes == [] and records["d0_im1"].mask is None
    assert os.path.exists(image_uri(str(imdl), t)) and os.path.exists(mask_uri(str(imdl), t))
    reasons = {os.path.basename(s["image"]): s["reason"] for s in summary.skipped}
    assert "mask not found" in reasons["im3_t.jpg"]
    assert "mask unreadable" in reasons["im5_t.jpg"]
    assert "differs from image size" in reasons["im5_x.jpg"]
    assert reasons["missing.jpg"] == "image not found"
    assert any("malformed" in r for r in reasons.values())
    dups = [s["reason"] for s in summary.skipped if "duplicate" in s["reason"]]
    assert dups == ["duplicate of index entry 0 (same mask)",
                    "duplicate of index entry 6 (other mask 'Gt/im1_t_gt.png')"]
    assert (summary.n_records, summary.n_tampered, summary.n_authentic, summary.n_boxes) == (4, 2, 2, 3)
    assert summary.box_count_histogram == {"1": 1, "2": 1}
    assert summary.mean_box_fill == pytest.approx(1.0)
    assert os.path.exists(imdl / "import_summary.json")


def test_imdl_merge_pad_jitter_deterministic(imdl, tmp_path):
    out = str(imdl)
    import_imdl(str(imdl / "index.json"), out, merge_distance=4, pad=0.1)
    t = {r.id: r for r in read_manifest(out)}["im1_t"]
    assert t.boxes == [[0.2, 1.2, 21.8, 10.8]]  # merged (gap 4) then padded by 10% and clipped
    import_imdl(str(imdl / "index.json"), out, jitter=0.2, seed=3)
    first = (imdl / "manifest.jsonl").read_bytes()
    import_imdl(str(imdl / "index.json"), out, jitter=0.2, seed=3)
    assert (imdl / "manifest.jsonl").read_bytes() == first


def test_imdl_outside_store_needs_copy_or_link(imdl, tmp_path):
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="outside the output store.*copy=True"):
        import_imdl(str(imdl / "index.json"), str(out))
    assert not (out / "manifest.jsonl").exists()
    import_imdl(str(imdl / "index.json"), str(out), link=True)
    rec = {r.id: r for r in read_manifest(str(out))}["im1_t"]
    assert rec.image == "data/Tp/im1_t.jpg" and os.path.islink(out / "data")
    assert os.path.exists(image_uri(str(out), rec))
    copied = tmp_path / "copied"
    import_imdl(str(imdl / "index.json"), str(copied), copy=True)
    rec = {r.id: r for r in read_manifest(str(copied))}["im1_t"]
    stem = file_stem("im1_t")  # copies are named by the id, collision-free
    assert rec.image == f"images/{stem}.jpg" and rec.mask == f"masks/{stem}.png"
    assert (copied / rec.image).read_bytes() == (imdl / "Tp" / "im1_t.jpg").read_bytes()


def test_imdl_split_by_scene_holds_out_whole_scenes(imdl):
    import_imdl(str(imdl / "index.json"), str(imdl), split_by_scene=True, val_fraction=0.5, seed=1)
    records = read_manifest(str(imdl))
    scenes: dict[str, set] = {}
    for r in records:
        scenes.setdefault(r.extra["scene"], set()).add(r.split)
    assert all(len(s) == 1 for s in scenes.values())  # a scene never straddles splits
    assert {r.split for r in records} == {"train", "val"}
    assert scenes.keys() == {"im1", "im7"}


def test_scene_keys_and_ids():
    assert [scene_key(p) for p in ["Tp/im11_t.jpg", "Tp/im1_out_r-10_im1.jpg", "Au/d0_im7.jpg",
                                   "Au/d12_im19.jpg", "x/other.png"]] == ["im11", "im1", "im7", "im19", "other"]
    assert unique_ids(["a/x.jpg", "b/x.png", "c/x y.jpg", "x.jpg"]) == ["x", "x-2", "x_y", "x-3"]


def test_assign_splits_fractions_and_determinism():
    keys = [f"s{i % 20}" for i in range(200)]
    splits = assign_splits(keys, 0.2, 0.1, seed=0)
    assert splits == assign_splits(keys, 0.2, 0.1, seed=0)
    assert splits != assign_splits(keys, 0.2, 0.1, seed=1)
    assert splits.count("val") == 40 and splits.count("test") == 20
    for k in set(keys):
        assert len({s for kk, s in zip(keys, splits) if kk == k}) == 1


def test_cli_import_imdl(imdl, capsys):
    assert cli_import_imdl(["--index", str(imdl / "index.json"), "--split-by-scene", "--pad", "0.05"]) == 2
    assert "--out is required" in capsys.readouterr().err  # never into the dataset's folder unasked
    assert cli_import_imdl(["--index", str(imdl / "index.json"), "--out", str(imdl), "--split-by-scene", "--pad",
                            "0.05"]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 records" in out and "skipped 7" in out and "splits:" in out
    assert cli_import_imdl(["--index", str(imdl / "index.json"), "--out", str(imdl), "--split", "dev"]) == 2
    assert "split must be one of" in capsys.readouterr().err


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    for name in ["a", "b", "c", "d"]:
        _img(str(root / "imgs" / f"{name}.jpg"))
    doc = {
        "images": [{"id": 1, "file_name": "imgs/a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "imgs/b.jpg"},
                   {"id": 3, "file_name": "imgs/c.jpg", "width": 40, "height": 30},
                   {"id": 4, "file_name": "imgs/d.jpg", "width": 40, "height": 30},
                   {"id": 5, "file_name": "imgs/gone.jpg", "width": 40, "height": 30}],
        "annotations": [{"image_id": 1, "bbox": [2, 3, 10, 5], "category_id": 1},
                        {"image_id": 1, "bbox": [30, 20, 20, 20], "category_id": 1},
                        {"image_id": 3, "bbox": [5, 5, 0, 4], "category_id": 1},
                        {"image_id": 99, "bbox": [0, 0, 1, 1]},
                        {"image_id": 4, "bbox": [1, 1, 5, 5], "category_id": 2}],
    }
    (root / "ann.json").write_text(json.dumps(doc))
    return root


def test_coco(coco):
    summary = import_coco(str(coco / "ann.json"), str(coco), str(coco), category_ids=[1])
    records = {r.id: r for r in read_manifest(str(coco))}
    assert records["a"].boxes == [[2, 3, 12, 8], [30, 20, 40, 30]]  # second clipped to the image
    assert records["a"].image == "imgs/a.jpg" and records["a"].extra["coco_id"] == 1
    assert records["b"].boxes == []  # no annotation: authentic (size read from the file)
    assert records["d"].boxes == []  # only category 2
    assert "c" not in records  # its only box is degenerate
    reasons = {os.path.basename(s["image"]): s["reason"] for s in summary.skipped}
    assert reasons == {"c.jpg": "all 1 boxes degenerate", "gone.jpg": "image not found"}
    assert any("unknown image_id" in n for n in summary.notes)


def test_cli_import_coco(coco, capsys):
    elsewhere = coco.parent / "elsewhere"
    assert cli_import_coco(["--coco-json", str(coco / "ann.json"), "--out", str(elsewhere), "--split", "test",
                            "--category-ids", "1"]) == 0
    assert "wrote 3 records" in capsys.readouterr().out
    records = read_manifest(str(elsewhere))
    assert {r.split for r in records} == {"test"} and not (coco / "manifest.jsonl").exists()
    assert all(r.image.startswith("data/") for r in records)  # local data outside --out: linked, not copied
    (coco / "bad.json").write_text("[]")
    assert cli_import_coco(["--coco-json", str(coco / "bad.json"), "--out", str(elsewhere)]) == 2
