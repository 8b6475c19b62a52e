"""The pseudo-labeling pipeline on a local Ray: masks, union of boxes, resume, every kind of bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpiml.data.imageio import decode_mask
from bpiml.data.manifest import read_manifest
from bpiml.data.naming import file_stem
from bpiml.pseudolabel.config import PseudoLabelConfig
from bpiml.pseudolabel.job import run_pseudolabel
from bpiml.pseudolabel.labeler import TeacherLabeler
from bpiml.pseudolabel.plan import plan_block
from bpiml.pseudolabel.rows import table
from bpiml.pseudolabel.stages import decode_rows, parse_lines, write_masks
from bpiml.pseudolabel.store import read_rejects

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def _write(root: Path, rel: str, data: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def make_store(root: Path, n_good: int = 5) -> dict[str, list]:
    """A store with good images (one with two boxes, one authentic) and one image of every bad kind."""
    lines: list[dict] = []
    for i in range(n_good):
        h, w = 48 + 8 * i, 64 + 4 * i
        img = _write(root, f"images/good{i}.jpg", _jpeg(_photo(h, w, i)))
        gt = np.zeros((h, w), np.uint8)
        gt[10:30, 12:40] = 255
        mask = _write(root, f"masks/good{i}.png", _png(Image.fromarray(gt)))
        boxes = [[12, 10, 40, 30]]
        if i == 1:
            boxes.append([45, 35, 60, 45])  # two boxes: the mask is their union
        if i == 2:
            boxes = []  # authentic
        lines.append({"id": f"good{i}", "image": img, "boxes": boxes, "mask": mask, "split": "train"})
    photo = _photo(40, 50, 99)
    bad = {
        "missing": {"image": "images/nope.jpg"},
        "corrupt": {"image": _write(root, "images/corrupt.jpg", b"\xff\xd8 this is not a jpeg")},
        "truncated": {"image": _write(root, "images/truncated.jpg", _jpeg(photo)[:300])},
        "zero_size": {"image": _write(root, "images/empty.jpg", b"")},
        "escape": {"image": "../outside.jpg"},
        "degenerate_only": {"image": _write(root, "images/degen.jpg", _jpeg(photo)), "boxes": [[10, 10, 10, 30]]},
    }
    converted = {
        "gray": _write(root, "images/gray.png", _png(Image.fromarray(photo[..., 0]))),
        "rgba": _write(root, "images/rgba.png", _png(Image.fromarray(np.dstack([photo, photo[..., :1]])))),
        "sixteen": _write(root, "images/sixteen.png",
                          _png(Image.fromarray(photo[..., 0].astype(np.uint16) * 257))),
        "out_of_bounds": _write(root, "images/oob.jpg", _jpeg(photo)),
    }
    for rid, values in bad.items():
        lines.append({"id": rid, "boxes": [[5, 5, 20, 20]], **values})
    for rid, rel in converted.items():
        boxes = [[-10, -5, 80, 25]] if rid == "out_of_bounds" else [[5, 5, 20, 20]]
        lines.append({"id": rid, "image": rel, "boxes": boxes})
    text = "\n".join(json.dumps(x) for x in lines) + "\nthis line is not json\n"
    (root / "manifest.jsonl").write_text(text)
    return {"good": [f"good{i}" for i in range(n_good)], "bad": list(bad) + ["<not json>"], "converted": list(converted)}


def _outputs(out: Path) -> tuple[list[dict], list[dict]]:
    return [r.to_dict() for r in read_manifest(str(out))], read_rejects(str(out))


def test_batch_steps_called_directly_on_a_batch(tmp_path):
    make_store(tmp_path, n_good=2)
    out = tmp_path / "out"
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    parsed = parse_lines({"text": np.array(lines, dtype=object)}, identity="box-v1")
    planned = plan_block(table(sorted(parsed.to_pylist(), key=lambda r: r["id"])), out=str(out), run_id="run1")
    decoded = decode_rows(planned, store=str(tmp_path), out=str(out), run_id="run1")
    ids = list(decoded["id"])
    rejected = {r["id"]: r["stage"] for r in read_rejects(str(out))}
    assert "good0" in ids and "gray" in ids  # decoded: on to the teacher
    assert rejected["missing"] == rejected["corrupt"] == rejected["truncated"] == rejected["zero_size"] == "decode"
    assert not {"missing", "corrupt", "truncated", "zero_size"} & set(ids)  # rejects go no further
    k = ids.index("good0")
    assert decoded["pixels"][k].shape == (48, 64, 3)

    labeler = TeacherLabeler(PseudoLabelConfig(store=str(tmp_path), out=str(out), teacher="box").to_dict(), "run1")
    labeled = labeler(decoded)
    assert labeled["mask_out"][k].shape == (48, 64) and labeled["mask_out"][k].sum() == 20 * 28

    written = write_masks(labeled, store=str(tmp_path), out=str(out), run_id="run1")
    good0 = json.loads(written["line"][list(written["id"]).index("good0")])
    assert good0["pseudo_mask"].startswith(f"pseudo/{file_stem('good0')}.") and (out / good0["pseudo_mask"]).exists()
    assert good0["iou_gt"] == 1.0  # the box is exactly the GT rectangle
    assert good0["teacher"] == "box" and good0["mask_area"] == pytest.approx(20 * 28 / (48 * 64))


def test_tiny_sam_pipeline_bad_inputs_and_resume(tmp_path):
    from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

    store, out = tmp_path / "store", tmp_path / "out"
    expected = make_store(store)
    checkpoint = save_tiny_sam_checkpoint(str(tmp_path / "tiny_sam.pth"))
    cfg = PseudoLabelConfig(store=str(store), out=str(out), teacher="sam", checkpoint=checkpoint, variant="tiny",
                            num_workers=2, gpus_per_worker=0, batch_size=2, part_rows=4, max_reject_rate=1.0, limit=6)

    first = run_pseudolabel(cfg)  # a partial run: the first 6 manifest lines
    assert first["labeled_this_run"] == 5 and first["rejected"] == 1  # 5 good, 'missing'

    summary = run_pseudolabel(cfg.replace(limit=None))  # resume over the whole store
    manifest, rejects = _outputs(out)
    labeled = [r["id"] for r in manifest]
    assert sorted(labeled) == sorted(expected["good"] + expected["converted"])  # none missing
    assert len(labeled) == len(set(labeled))  # none duplicated
    assert summary["skipped_already_labeled"] == 5 and summary["labeled_this_run"] == 4
    assert summary["rejected"] == len(expected["bad"])

    rejected = {r["id"] or r["image"] for r in rejects if r["action"] == "rejected"}
    assert rejected == {"missing", "corrupt", "truncated", "zero_size", "escape", "degenerate_only",
                        "this line is not json"}
    reasons = {r["id"]: r["reason"] for r in rejects if r["action"] == "rejected"}
    assert "missing" in reasons["missing"] and "escape" in reasons["escape"]
    noted = {r["id"] for r in rejects if r["action"] in ("converted", "clipped")}
    assert noted == set(expected["converted"])

    for record in manifest:
        image = Image.open(store / record["image"])
        mask = decode_mask((out / record["pseudo_mask"]).read_bytes())
        assert mask.shape == (image.height, image.width)
        assert record["teacher"] == "sam" and record["teacher_version"]
    authentic = next(r for r in manifest if r["id"] == "good2")
    assert authentic["mask_area"] == 0.0
    assert all(r["iou_gt"] is not None for r in manifest if r["id"].startswith("good"))
    assert json.loads((out / "config.json").read_text())["teacher"] == "sam"
    assert json.loads((out / "summary.json").read_text())["labeled_total"] == len(manifest)

    again = run_pseudolabel(cfg.replace(limit=None))  # nothing left to do: nothing labeled twice
    assert again["labeled_this_run"] == 0 and again["labeled_total"] == len(manifest)


def test_box_teacher_union_of_boxes_and_reject_rate(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    make_store(store, n_good=2)
    cfg = PseudoLabelConfig(store=str(store), out=str(out), teacher="box", num_workers=1, max_reject_rate=0.2)
    with pytest.raises(RuntimeError, match="max_reject_rate"):
        run_pseudolabel(cfg)  # 7 of 13 images are bad: past the allowed rate, but the good ones are labeled
    manifest, _ = _outputs(out)
    two_boxes = next(r for r in manifest if r["id"] == "good1")
    mask = decode_mask((out / two_boxes["pseudo_mask"]).read_bytes())
    expected = np.zeros_like(mask)
    expected[10:30, 12:40] = True
    expected[35:45, 45:60] = True
    assert np.array_equal(mask, expected)
    clipped = next(r for r in manifest if r["id"] == "out_of_bounds")
    oob = decode_mask((out / clipped["pseudo_mask"]).read_bytes())
    assert oob[:25, :].all() and not oob[25:, :].any()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="num_workers"):
        PseudoLabelConfig(num_workers=0).validate()
    with pytest.raises(ValueError, match="checkpoint"):
        PseudoLabelConfig(teacher="sam").validate()
    with pytest.raises(ValueError, match="unknown PseudoLabelConfig key"):
        PseudoLabelConfig.from_dict({"actors": 2})
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        run_pseudolabel(PseudoLabelConfig(store=str(tmp_path / "nothing"), out=str(tmp_path / "o")))


def test_an_unchanged_finished_output_reruns_without_a_pass(tmp_path, monkeypatch):
    """A rerun of a finished output with the same manifest files, teacher and options does nothing and
    writes nothing; a --limit run leaves no signature, so the next full run labels the rest."""
    from bpiml.data.sample import make_sample_store
    from bpiml.pseudolabel import job

    store, out = make_sample_store(str(tmp_path / "store"), n_images=6, seed=3, size=64), tmp_path / "out"
    cfg = PseudoLabelConfig(store=store, out=str(out), teacher="box", num_workers=1)
    first = run_pseudolabel(cfg)
    assert first["labeled_this_run"] == 6 and first["rejected"] == 0
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    passes = []
    build = job.plan_pipeline
    monkeypatch.setattr(job, "plan_pipeline", lambda *a, **k: passes.append(1) or build(*a, **k))
    again = run_pseudolabel(cfg.replace(num_workers=2, part_rows=8))  # resources and layout change no record
    assert (again["labeled_this_run"], again["skipped_already_labeled"], again["labeled_total"]) == (0, 6, 6)
    assert passes == [] and {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    part = tmp_path / "part"
    assert run_pseudolabel(cfg.replace(out=str(part), limit=2))["labeled_this_run"] == 2
    assert run_pseudolabel(cfg.replace(out=str(part)))["labeled_this_run"] == 4 and len(passes) == 2


def test_what_brings_back_the_full_pass(tmp_path):
    """The signature follows the manifest files' versions and the record options, not resources; an
    output with rejects, an incomplete one or a --limit run never skips the pass."""
    import json
    import os

    from bpiml.data.manifest import manifest_files
    from bpiml.data.sample import make_sample_store
    from bpiml.pseudolabel.job import input_signature, unchanged_rerun

    store, out = make_sample_store(str(tmp_path / "store"), n_images=2, seed=3, size=32), tmp_path / "out"
    cfg = PseudoLabelConfig(store=store, out=str(out), teacher="box")
    files = manifest_files(store)
    sign = lambda c: input_signature(c, files, "box-v1")
    signature = sign(cfg)
    assert sign(cfg.replace(num_workers=5, batch_size=1, part_rows=3, s3_endpoint="http://x")) == signature
    for changed in (cfg.replace(max_boxes=3), cfg.replace(grabcut_time_limit_s=1.0)):
        assert sign(changed) != signature
    assert input_signature(cfg, files, "grabcut-v2-abc") != signature
    manifest = Path(files[0])
    os.utime(manifest, ns=(manifest.stat().st_atime_ns, manifest.stat().st_mtime_ns + 10**9))
    assert sign(cfg) != signature
    out.mkdir()
    summary = {"out": str(out), "images_in_manifest": 2, "rejected": 0, "duplicates": 0, "labeled_total": 2,
               "confidence": {"review_below": 0.5}}
    (out / "summary.json").write_text(json.dumps(summary))
    index = {"complete": True, "input_signature": signature, "runs": ["r1"]}
    assert unchanged_rerun(cfg, index, signature)["skipped_already_labeled"] == 2
    assert unchanged_rerun(cfg.replace(limit=1), index, signature) is None
    assert unchanged_rerun(cfg, {**index, "complete": False}, signature) is None
    assert unchanged_rerun(cfg, index, sign(cfg)) is None  # the touched manifest
    assert unchanged_rerun(cfg.replace(review_below=0.3), index, signature) is None  # its count is redone
    (out / "summary.json").write_text(json.dumps({**summary, "rejected": 1}))  # a reject is retried
    assert unchanged_rerun(cfg, index, signature) is None


def test_every_bad_line_is_its_own_reject_and_the_counts_add_up(tmp_path):
    """Lines without a usable id (a JSON array, an empty id, the same malformed line twice), a bad line
    sharing an id with a good one, and a duplicated id: one reject row per line, named by `file:line`,
    and input lines = labeled + skipped + rejected (the summary checks it on every run)."""
    store, out = tmp_path / "store", tmp_path / "out"
    photo = _write(store, "images/a.jpg", _jpeg(_photo(40, 50, 1)))
    good = [json.dumps({"id": f"g{i}", "image": photo, "boxes": [[5, 5, 20, 20]]}) for i in range(3)]
    lines = [good[0], '["a", "json", "array"]', json.dumps({"id": "", "image": photo, "boxes": []}),
             "{not json", "{not json", good[1], json.dumps({"id": "g1", "image": photo}),  # g1 also on a bad line
             good[2], good[2]]  # g2 twice
    (store / "manifest.jsonl").write_text("\n".join(lines) + "\n\n")
    summary = run_pseudolabel(PseudoLabelConfig(store=str(store), out=str(out), teacher="box", num_workers=1,
                                                max_reject_rate=1.0))
    rejects = read_rejects(str(out))
    manifest_file = str(store / "manifest.jsonl")
    named = sorted(r["reason"].split(": ", 1)[0] for r in rejects if not r["id"])
    assert named == [f"{manifest_file}:{n}" for n in (2, 3, 4, 5)]  # each id-less line on its own
    assert sorted(r["id"] for r in rejects if r["id"]) == ["g1", "g1", "g2", "g2"]
    assert summary["images_in_manifest"] == len(lines) == 9
    assert summary["labeled_this_run"] == 1 and summary["rejected"] == 8 and summary["duplicates"] == 2
    assert summary["labeled_this_run"] + summary["skipped_already_labeled"] + summary["rejected"] == 9
    again = run_pseudolabel(PseudoLabelConfig(store=str(store), out=str(out), teacher="box", num_workers=1,
                                              max_reject_rate=1.0))
    assert (again["skipped_already_labeled"], again["rejected"]) == (1, 8)


def test_waves_label_every_record_once_and_a_killed_runs_todo_is_dropped(tmp_path, monkeypatch):
    """With waves of at most 4 records the run is one plan execution and at least 3 labeling executions: the
    same records as one wave, each id once, no todo file left; a killed run's todo file is removed, not labeled."""
    from bpiml.data import parts
    from bpiml.data.sample import make_sample_store
    from bpiml.pseudolabel import job, waves
    from bpiml.pseudolabel.rows import plan_row

    store = make_sample_store(str(tmp_path / "store"), n_images=10, seed=4, size=64)
    one = run_pseudolabel(PseudoLabelConfig(store=store, out=str(tmp_path / "one"), teacher="box", num_workers=1))
    out = tmp_path / "waves"
    parts.write_part(str(out / waves.TODO_DIR), "20260101_000000.killed", [plan_row(id="ghost", image="none.png")])
    executions = []
    label = job.label_pipeline
    monkeypatch.setattr(job, "label_pipeline", lambda *a, **k: executions.append(1) or label(*a, **k))
    cfg = PseudoLabelConfig(store=store, out=str(out), teacher="box", num_workers=1, part_rows=2, wave_rows=4)
    summary = run_pseudolabel(cfg)
    waves_run = len(executions)
    assert waves_run >= 3 and summary["labeled_this_run"] == 10 and summary["rejected"] == 0
    records, expected = _outputs(out)[0], _outputs(tmp_path / "one")[0]
    assert sorted((r["id"], r["fingerprint"]) for r in records) == sorted((r["id"], r["fingerprint"]) for r in expected)
    assert len(records) == 10 == one["labeled_this_run"] and not (out / waves.TODO_DIR).exists()
    assert run_pseudolabel(cfg.replace(wave_rows=3))["skipped_already_labeled"] == 10  # nothing to label: no wave
    assert len(executions) == waves_run


def test_wave_groups_never_exceed_the_wave():
    from bpiml.pseudolabel.waves import file_rows, wave_groups

    files = [f"f{k}" for k in range(7)]
    assert file_rows(50_000) == 4096 and file_rows(4) == 4
    assert wave_groups(files, wave_rows=4, rows_per_file=4) == [[f] for f in files]
    assert wave_groups(files, wave_rows=9, rows_per_file=4) == [files[0:2], files[2:4], files[4:6], files[6:]]
    assert wave_groups([], wave_rows=9, rows_per_file=4) == []
