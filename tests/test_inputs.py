"""One input vocabulary: every job reads a store, an IMDL-BenCo list, a COCO file or a plain folder of images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bpiml.data import imageio, inputs, manifest
from bpiml.data.naming import file_stem
from bpiml.model.student import StudentConfig, build_student

N_FORGED, N_AUTHENTIC, SIZE = 6, 2, 48


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """One small dataset in all four forms; the images and masks live under `data/`."""
    root = tmp_path_factory.mktemp("inputs")
    data = root / "data"
    for sub in ("Tp", "Gt", "Au", "store"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    pairs, coco_images, coco_boxes, records = [], [], [], []
    for i in range(N_FORGED):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE + 8, 3), dtype=np.uint8)).save(data / "Tp" / f"f{i}.jpg")
        mask = np.zeros((SIZE, SIZE + 8), np.uint8)
        mask[8:24, 10:30] = 255
        Image.fromarray(mask).save(data / "Gt" / f"f{i}.png")
        pairs.append([f"Tp/f{i}.jpg", f"Gt/f{i}.png"])
        coco_images.append({"id": i, "file_name": f"Tp/f{i}.jpg", "width": SIZE + 8, "height": SIZE})
        coco_boxes.append({"id": i, "image_id": i, "bbox": [10, 8, 20, 16], "category_id": 1})
        records.append({"id": f"f{i}", "image": f"../Tp/f{i}.jpg", "boxes": [[10, 8, 30, 24]]})
    for i in range(N_AUTHENTIC):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(data / "Au" / f"a{i}.png")
        pairs.append([f"Au/a{i}.png", "Negative"])
        coco_images.append({"id": 100 + i, "file_name": f"Au/a{i}.png", "width": SIZE, "height": SIZE})
    (data / "index.json").write_text(json.dumps(pairs))
    (data / "coco.json").write_text(json.dumps({"images": coco_images, "annotations": coco_boxes,
                                                "categories": [{"id": 1, "name": "forged"}]}))
    # a store whose images are its own copies (manifest paths stay inside the store)
    (data / "store" / "img").mkdir()
    for i in range(N_FORGED):
        (data / "store" / "img" / f"f{i}.jpg").write_bytes((data / "Tp" / f"f{i}.jpg").read_bytes())
        records[i]["image"] = f"img/f{i}.jpg"
        (data / "store" / "img" / f"f{i}.png").write_bytes((data / "Gt" / f"f{i}.png").read_bytes())
        records[i]["mask"] = f"img/f{i}.png"
        records[i]["split"] = "test"
    (data / "store" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.manual_seed(0)
    student = build_student(StudentConfig(img_size=64, width=32, memory_slots=8)).eval()
    ckpt = root / "model.pt"
    torch.save({"model_config": student.config.to_dict(), "model_state": student.state_dict(), "epoch": 0}, ckpt)
    return {"root": str(root), "data": str(data), "store": str(data / "store"), "imdl": str(data / "index.json"),
            "coco": str(data / "coco.json"), "folder": str(data / "Tp"), "model": str(ckpt)}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


# --- detection and import -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["store", "imdl", "coco", "folder"])
def test_each_form_is_recognised_by_what_it_holds(data, kind) -> None:
    assert inputs.detect(data[kind]) == kind
    assert inputs.detect(str(Path(data["store"]) / "manifest.jsonl")) == "store"


def test_an_unknown_input_names_the_four_forms(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(FileNotFoundError, match="IMDL-BenCo list .* COCO file .* folder of images"):
        inputs.detect(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="IMDL-BenCo list or a COCO file"):
        inputs.detect(str(tmp_path / "other.json"))
    with pytest.raises(FileNotFoundError, match="not found"):
        inputs.detect(str(tmp_path / "missing"))


@pytest.mark.parametrize("kind", ["imdl", "coco", "folder"])
def test_an_import_goes_beside_the_outputs_once_never_into_the_input(data, kind, tmp_path) -> None:
    before = _files(Path(data["data"]))
    store, got = inputs.as_store(data[kind], str(tmp_path / "imports"))
    assert got == kind and store.startswith(str(tmp_path / "imports"))
    assert _files(Path(data["data"])) == before  # nothing written into the user's folder
    records = manifest.read_manifest(store)
    assert len(records) == {"imdl": 8, "coco": 8, "folder": N_FORGED}[kind]
    for r in records:  # every image resolves (through the declared link) and decodes
        assert imageio.load_image(manifest.image_uri(store, r))[0].shape[0] == SIZE
    mtime = (Path(store) / "manifest.jsonl").stat().st_mtime_ns
    assert inputs.as_store(data[kind], str(tmp_path / "imports"))[0] == store  # reused, not redone
    assert (Path(store) / "manifest.jsonl").stat().st_mtime_ns == mtime


def test_a_changed_input_is_imported_again(data, tmp_path) -> None:
    listed = tmp_path / "list" / "index.json"
    listed.parent.mkdir()
    listed.write_text(json.dumps([[str(Path(data["data"]) / "Tp" / "f0.jpg"), "Negative"]]))
    first, _ = inputs.as_store(str(listed), str(tmp_path / "imports"))
    listed.write_text(json.dumps([[str(Path(data["data"]) / "Tp" / f"f{i}.jpg"), "Negative"] for i in range(2)]))
    second, _ = inputs.as_store(str(listed), str(tmp_path / "imports"))
    assert first != second and len(manifest.read_manifest(second)) == 2


# --- every job ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["imdl", "folder"])  # a store: tests/test_predict.py; COCO: as an IMDL list
def test_predict_reads_every_form_and_writes_probabilities_by_image_name(ray_local, data, kind, tmp_path) -> None:
    from bpiml.evaluation.predict import PredictConfig, read_predictions, run_predict

    fmt = "npy" if kind == "folder" else "png"
    out = tmp_path / "pred"
    summary = run_predict(PredictConfig(model=data["model"], store=data[kind], out=str(out), num_workers=1,
                                        cpus_per_worker=0.5, batch_size=4, overlays=False, probs=fmt))
    expected = {"imdl": 8, "folder": N_FORGED}[kind]
    assert summary["predicted"] == expected and summary["rejected"] == 0
    rows = list(read_predictions(str(out)))
    assert sorted(r["pred_probs"] for r in rows) == sorted(f"probs/{file_stem(r['id'])}.{fmt}" for r in rows)
    forged = [f"f{i}" for i in range(N_FORGED)]
    assert sorted(r["id"] for r in rows) == sorted(forged + (["a0", "a1"] if kind in ("imdl", "coco") else []))
    for r in rows:
        probs = imageio.decode_probs((out / r["pred_probs"]).read_bytes())
        mask = imageio.decode_mask((out / r["pred_mask"]).read_bytes())
        assert probs.shape == mask.shape == (r["height"], r["width"]) and 0 <= probs.min() <= probs.max() <= 1
    assert not (Path(data["data"]) / "inputs").exists()


@pytest.mark.parametrize("kind", ["imdl", "coco"])  # a store: tests/test_pseudolabel.py
def test_pseudolabel_reads_every_form(ray_local, data, kind, tmp_path) -> None:
    from bpiml.pseudolabel.config import PseudoLabelConfig
    from bpiml.pseudolabel.job import run_pseudolabel
    from bpiml.pseudolabel.store import PseudoStore

    out = tmp_path / "pseudo"
    summary = run_pseudolabel(PseudoLabelConfig(store=data[kind], out=str(out), teacher="box", num_workers=1))
    labeled = list(manifest.read_manifest(str(out)))
    expected = 8
    assert len(labeled) == expected and summary["labeled_this_run"] == expected and summary["rejected"] == 0
    store = PseudoStore.open(str(out))
    for r in labeled:
        mask = imageio.decode_mask(Path(store.pseudo_mask(r)).read_bytes())
        assert mask.shape == imageio.load_image(store.image(r))[0].shape[:2]
        assert mask.any() == bool(r.boxes)  # the box teacher fills exactly the boxes


def test_training_reads_an_imdl_list_with_gt_supervision(ray_local, data, tmp_path) -> None:
    from bpiml.train.config import TrainConfig
    from bpiml.train.job import _prepare, check_training_inputs

    config, _ = _prepare(TrainConfig(store=data["imdl"], supervision="gt", storage_path=str(tmp_path / "runs"),
                                     num_workers=1, cpus_per_worker=0.5, gpus_per_worker=0, resource_wait_s=10))
    assert config.store.startswith(str(tmp_path / "runs" / "inputs"))
    training = check_training_inputs(config)
    assert training.n_train + training.n_val == N_FORGED + N_AUTHENTIC and training.n_val >= 1


def test_evaluate_reads_every_form_names_outputs_by_image_and_pools(ray_local, data, tmp_path) -> None:
    from bpiml.evaluation.evaluate import EvalConfig, run_evaluation
    from bpiml.evaluation.tables import read_per_image

    out = tmp_path / "eval"
    sets = {k: data[k] for k in ("store", "imdl", "coco", "folder")}
    result = run_evaluation(EvalConfig(model=data["model"], datasets=[f"{k}={v}" for k, v in sets.items()],
                                       out=str(out), num_workers=1, cpus_per_worker=0.5, mlflow=False,
                                       probs="npy"))
    by = {r["name"]: r for r in result["table"]}
    assert by["imdl"]["n_images"] == 8 and by["imdl"]["n_manipulated"] == N_FORGED
    assert by["store"]["n_images"] == by["store"]["n_manipulated"] == N_FORGED
    assert by["coco"]["n_images"] == by["coco"]["n_authentic"] == N_AUTHENTIC  # COCO boxes are no pixel GT: skipped
    assert by["folder"]["n_images"] == N_FORGED and by["pooled"]["n_images"] == sum(by[k]["n_images"] for k in sets)
    saved = json.loads((out / "results.json").read_text())
    assert {r["name"] for r in saved["table"]} == set(by) and "pooled" in by
    rows = list(read_per_image(str(out)))
    imdl_rows = [r for r in rows if r["set"] == "imdl"]
    assert sorted(r["id"] for r in imdl_rows) == sorted([f"f{i}" for i in range(N_FORGED)] + ["a0", "a1"])
    for r in imdl_rows:  # named by the image, not by the list entry's path
        assert r["pred_probs"] == f"probs/{file_stem('imdl')}/{file_stem(r['id'])}.npy"
        assert (out / r["pred_probs"]).exists() and (out / r["pred_mask"]).exists()
    assert all({"set", "id", "f1", "iou", "auc", "score", "area", "pred_probs"} <= set(r) for r in rows)
