"""Inference on any image size with a randomly initialised student; checkpoint loading; CLI; batch step."""

import json

import numpy as np
import pytest
import torch

from bpiml.data import imageio, visual
from bpiml.data.naming import file_stem
from bpiml.evaluation import cli, inference, predict
from bpiml.model.student import StudentConfig, build_student

IMG_SIZE = 64  # small input keeps CPU tests fast


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(StudentConfig(img_size=IMG_SIZE, width=32, memory_slots=8)).eval()


@pytest.fixture(scope="module")
def checkpoint(student, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model_config": student.config.to_dict(), "model_state": student.state_dict(), "epoch": 3}, path)
    return path


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5, 300), (130, 71)])
def test_predict_probs_any_size(student, shape):
    probs = inference.predict_probs(student, _image(*shape))
    assert probs.shape == shape and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0


def test_predict_batch_matches_single(student):
    images = [_image(40, 50, 1), _image(70, 30, 2)]
    batch = inference.predict_batch(student, images)
    assert [p.shape for p in batch] == [(40, 50), (70, 30)]
    np.testing.assert_allclose(batch[1], inference.predict_probs(student, images[1]), atol=1e-5)
    assert inference.predict_batch(student, []) == []


def test_bad_image_is_an_error(student):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        inference.predict_probs(student, np.zeros((10, 10), np.uint8))


def test_load_model_from_checkpoint_file_and_folder(student, checkpoint):
    image = _image(48, 48, 3)
    expected = inference.predict_probs(student, image)
    for uri in (str(checkpoint), str(checkpoint.parent)):
        model = inference.load_model(uri)
        assert not model.training and model.config.img_size == IMG_SIZE
        np.testing.assert_allclose(inference.predict_probs(model, image), expected, atol=1e-5)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        inference.load_model(str(tmp_path / "missing"))
    bad = tmp_path / "bad.pt"
    torch.save({"state": {}}, bad)
    with pytest.raises(ValueError, match="model_config"):
        inference.load_model(str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        inference.load_model(str(junk))


def test_overlay_tints_mask_and_keeps_the_rest():
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = visual.overlay(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[10, 15, 0] > 150 and out[10, 15, 1] < 100  # tinted red inside
    assert (out[0, 0] == 100).all()  # untouched far away
    with pytest.raises(ValueError, match="mask shape"):
        visual.overlay(image, np.zeros((5, 5), bool))


def test_cli_predict(checkpoint, tmp_path, capsys):
    """`bpiml predict` writes one image's outputs in jobs/predict.py's layout: --out a folder, --probs a format."""
    src = tmp_path / "in.png"
    src.write_bytes(imageio.encode_image(_image(45, 77), "png"))
    out = tmp_path / "pred"
    assert cli.cli_predict(["--model", str(checkpoint), "--image", str(src), "--out", str(out),
                            "--probs", "npy", "--threshold", "0.3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    name = file_stem("in")  # the image's stem, named as jobs/predict.py names a record id
    assert printed["mask"] == str(out / "masks" / f"{name}.png")
    assert imageio.load_mask(printed["mask"]).shape == (45, 77)
    assert imageio.load_image(str(out / "overlays" / f"{name}.jpg"))[0].shape == (45, 77, 3)
    assert np.load(out / "probs" / f"{name}.npy").shape == (45, 77)
    assert 0.0 <= printed["score"] <= 1.0 and 0.0 <= printed["mask_area"] <= 1.0


def test_predictor_batch_step_on_a_dict(student, tmp_path):
    good = tmp_path / "a b.png"
    good.write_bytes(imageio.encode_image(_image(33, 44), "png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8garbage")
    step = predict.Predictor("", str(tmp_path / "out"), model=student)
    rows = step({"id": np.array(["x/a b", "bad"]), "image": np.array([str(good), str(broken)])})
    assert list(rows["error"][:1]) == [""] and rows["error"][1]
    assert rows["pred_mask"][0] == f"masks/{file_stem('x/a b')}.png" and (rows["height"][0], rows["width"][0]) == (33, 44)
    assert imageio.load_mask(str(tmp_path / "out" / rows["pred_mask"][0])).shape == (33, 44)
    assert (tmp_path / "out" / "overlays" / f"{file_stem('x/a b')}.jpg").exists()


def test_predict_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model"):
        predict.PredictConfig.from_dict({"store": "s", "out": "o"})
    with pytest.raises(ValueError, match="cpus_per_worker"):
        predict.PredictConfig.from_dict({"model": "m", "store": "s", "out": "o", "cpus_per_worker": 0})
    with pytest.raises(ValueError, match="unknown"):
        predict.PredictConfig.from_dict({"model": "m", "store": "s", "out": "o", "gpus": 1})
