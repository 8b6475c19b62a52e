"""Teachers: interface, registry, box / GrabCut / SAM (tiny SAM through the real loading path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bpiml.data.boxes import box_pixels
from bpiml.pseudolabel.teachers import TEACHERS, build_teacher
from bpiml.pseudolabel.teachers.base import Teacher, validate_batch
from bpiml.pseudolabel.teachers.grabcut import GrabCutConfig, GrabCutTeacher
from bpiml.pseudolabel.teachers.tiny_sam import save_tiny_sam_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_sam_checkpoint(str(tmp_path_factory.mktemp("sam") / "tiny_sam.pt"), seed=0)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (200, 90), (64, 64)]]


def _boxes() -> list[np.ndarray]:
    return [
        np.array([[10, 12, 70, 80], [90, 30, 150, 110]], np.float32),
        np.array([[5, 20, 60, 150]], np.float32),
        np.array([[8, 8, 40, 30]], np.float32),
    ]


def _encoder_calls(teacher) -> list[int]:
    """Batch sizes seen by the SAM image encoder (a forward hook; the encoder itself is untouched)."""
    calls: list[int] = []
    teacher.sam.image_encoder.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    return calls


# --- interface and registry -------------------------------------------------------------------
def test_registry_and_protocol(tiny_checkpoint: str) -> None:
    assert set(TEACHERS) == {"sam", "grabcut", "box"}
    for name, kwargs in [("box", {}), ("grabcut", {}), ("sam", {"checkpoint": tiny_checkpoint, "variant": "tiny"})]:
        teacher = build_teacher(name, **kwargs)
        assert isinstance(teacher, Teacher)
        assert teacher.name == name
    assert build_teacher("box").version == "box-v1"
    # the pipeline passes batch_size to every teacher
    assert build_teacher("grabcut", batch_size=8).name == "grabcut"


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown teacher 'mask-rcnn'"):
        build_teacher("mask-rcnn")
    with pytest.raises(ValueError, match="iterationz"):
        build_teacher("grabcut", iterationz=3)
    with pytest.raises(ValueError, match="no options"):
        build_teacher("box", colour="red")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build_teacher("sam")


def test_check_inputs_rejects_bad_calls() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="1 images but 2 box arrays"):
        validate_batch([image], [np.zeros((0, 4)), np.zeros((0, 4))])
    with pytest.raises(ValueError, match=r"images\[0\].*uint8"):
        validate_batch([image.astype(np.float32)], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match=r"boxes\[0\].*Nx4"):
        validate_batch([image], [np.zeros((2, 3))])
    # empty lists and object arrays of per-box arrays (as Ray Data hands them over) are accepted
    assert validate_batch([image], [[]])[0].shape == (0, 4)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.array([0, 0, 2, 2]), np.array([1, 1, 3, 3])
    assert validate_batch([image], [ragged])[0].shape == (2, 4)


def test_box_pixels_covers_touched_pixels() -> None:
    assert box_pixels(np.array([2, 3, 5, 7]), 10, 10) == (2, 3, 5, 7)
    assert box_pixels(np.array([2.5, 3.2, 5.1, 6.9]), 10, 10) == (2, 3, 6, 7)
    assert box_pixels(np.array([4.2, 4.2, 4.3, 4.3]), 10, 10) == (4, 4, 5, 5)  # sub-pixel box: one pixel
    assert box_pixels(np.array([-3, -3, 40, 40]), 10, 12) == (0, 0, 12, 10)


# --- box teacher -------------------------------------------------------------------------------
def test_box_teacher_is_the_exact_union_of_boxes() -> None:
    teacher = build_teacher("box")
    images = _images()
    masks = teacher.predict(images, _boxes())
    expected = np.zeros((120, 160), bool)
    expected[12:80, 10:70] = True
    expected[30:110, 90:150] = True
    np.testing.assert_array_equal(masks[0], expected)
    assert [m.shape for m in masks] == [im.shape[:2] for im in images]
    assert all(m.dtype == bool for m in masks)


@pytest.mark.parametrize("name", ["box", "grabcut"])
def test_no_boxes_gives_an_empty_mask(name: str) -> None:
    (mask,) = build_teacher(name).predict([np.full((30, 40, 3), 200, np.uint8)], [np.zeros((0, 4), np.float32)])
    assert mask.shape == (30, 40) and mask.dtype == bool and not mask.any()


# --- GrabCut -----------------------------------------------------------------------------------
def _disc_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    height, width = 240, 320
    # textured background: noise plus stripes, mid-dark greens and browns
    base = rng.normal(0, 18, (height, width, 3)) + np.array([70, 90, 50])
    base += (20 * np.sin(np.arange(width) / 3.0))[None, :, None]
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - 120) ** 2 + (xx - 170) ** 2 <= 50**2
    image = base.copy()
    image[disc] = rng.normal(0, 10, (disc.sum(), 3)) + np.array([235, 220, 200])
    box = np.array([[100, 50, 245, 195]], np.float32)  # loose: ~20 px of background on every side
    return np.clip(image, 0, 255).astype(np.uint8), box, disc


def test_grabcut_segments_a_disc_inside_a_loose_box() -> None:
    image, box, disc = _disc_scene()
    (mask,) = build_teacher("grabcut").predict([image], [box])
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.8, iou
    box_iou = disc.sum() / ((box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1]))
    assert iou > box_iou + 0.1  # clearly better than the filled box


def test_grabcut_union_and_fallback() -> None:
    image, box, disc = _disc_scene()
    teacher = GrabCutTeacher()
    second = np.array([[10, 10, 60, 60]], np.float32)
    (both,) = teacher.predict([image], [np.concatenate([box, second])])
    (first,) = teacher.predict([image], [box])
    (only_second,) = teacher.predict([image], [second])
    np.testing.assert_array_equal(both, first | only_second)
    # a box too small for GrabCut is answered with the filled box
    (tiny,) = teacher.predict([image], [np.array([[5, 5, 9, 30]], np.float32)])
    assert tiny.sum() == 4 * 25 and teacher.fallbacks >= 1


def test_grabcut_config_and_version() -> None:
    with pytest.raises(ValueError, match="iterations"):
        GrabCutConfig(iterations=0).validate()
    with pytest.raises(ValueError, match="blur"):
        GrabCutConfig(blur=4).validate()
    default, other = GrabCutTeacher(), GrabCutTeacher(GrabCutConfig(iterations=7))
    assert default.version == GrabCutTeacher().version and default.version.startswith("grabcut-v2-")
    assert default.version != other.version


# --- SAM teacher (tiny SAM, real loading path) ---------------------------------------------------
def test_sam_loads_tiny_checkpoint_and_returns_one_mask_per_image(tiny_checkpoint: str) -> None:
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny")
    images = _images()
    masks = teacher.predict(images, _boxes())
    assert [m.shape for m in masks] == [im.shape[:2] for im in images]
    assert all(m.dtype == bool for m in masks)
    assert teacher.version.startswith("sam-tiny-") and teacher.version.endswith("-stock")
    assert len(teacher.version.split("-")[2]) == 12
    assert all(not p.requires_grad for p in teacher.sam.parameters()) and not teacher.sam.training


def test_sam_union_contains_each_single_box_mask(tiny_checkpoint: str) -> None:
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny")
    image = _images()[0]
    boxes = _boxes()[0]
    (both,) = teacher.predict([image], [boxes])
    singles = [teacher.predict([image], [boxes[i:i + 1]])[0] for i in range(2)]
    for single in singles:
        assert single.any()
        assert (both & single).sum() >= 0.999 * single.sum()  # batched decoder: equal up to float rounding
    assert (both ^ (singles[0] | singles[1])).mean() < 0.001


def test_sam_images_without_boxes_skip_the_encoder(tiny_checkpoint: str) -> None:
    teacher = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", batch_size=4)
    calls = _encoder_calls(teacher)
    images = _images()
    none = [np.zeros((0, 4), np.float32)] * 3
    masks = teacher.predict(images, none)
    assert calls == [] and not any(m.any() for m in masks)
    boxes = [none[0], _boxes()[1], none[0]]
    masks = teacher.predict(images, boxes)
    assert calls == [1]  # only the image with boxes was encoded
    assert not masks[0].any() and not masks[2].any() and masks[1].shape == (200, 90)


def test_sam_batched_encoder_matches_unbatched(tiny_checkpoint: str) -> None:
    batched = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", batch_size=2)
    single = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny", batch_size=1)
    calls = _encoder_calls(batched)
    images, boxes = _images(), _boxes()
    for a, b in zip(batched.predict(images, boxes), single.predict(images, boxes)):
        assert a.shape == b.shape and (a == b).mean() > 0.999
    assert calls == [2, 1]


def test_sam_missing_checkpoint_names_the_path(tmp_path) -> None:
    missing = str(tmp_path / "nowhere" / "sam_vit_b.pth")
    with pytest.raises(FileNotFoundError, match="nowhere/sam_vit_b.pth"):
        build_teacher("sam", checkpoint=missing, variant="vit_b")


def test_sam_variant_mismatch_names_checkpoint_and_variant(tiny_checkpoint: str) -> None:
    with pytest.raises(ValueError, match=r"tiny_sam\.pt does not fit variant 'vit_b'.*suggests tiny"):
        build_teacher("sam", checkpoint=tiny_checkpoint, variant="vit_b")
    with pytest.raises(ValueError, match="variant must be one of"):
        build_teacher("sam", checkpoint=tiny_checkpoint, variant="vit_x")


def test_sam_rejects_files_that_are_not_checkpoints(tmp_path) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read SAM checkpoint .*notes.pt"):
        build_teacher("sam", checkpoint=str(bad), variant="tiny")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a SAM checkpoint"):
        build_teacher("sam", checkpoint=str(other), variant="tiny")


def test_sam_loads_from_s3_like_a_local_file(tmp_path, monkeypatch, tiny_checkpoint: str) -> None:
    """Same weights, same version from an s3:// URI (real S3 API: moto server) as from a local path."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    from bpiml.data import storage

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL_S3": url, "BPIML_CACHE": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="weights")
        uri = save_tiny_sam_checkpoint("s3://weights/sam/tiny.pt", seed=0)
        remote = build_teacher("sam", checkpoint=uri, variant="tiny")
        local = build_teacher("sam", checkpoint=tiny_checkpoint, variant="tiny")
        assert remote.version == local.version
        image, boxes = _images()[0], _boxes()[0]
        np.testing.assert_array_equal(remote.predict([image], [boxes])[0], local.predict([image], [boxes])[0])
        with pytest.raises(FileNotFoundError, match="s3://weights/sam/missing.pt"):
            build_teacher("sam", checkpoint="s3://weights/sam/missing.pt", variant="tiny")
    finally:
        storage.set_s3_endpoint(None)
        server.stop()
