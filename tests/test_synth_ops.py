"""The forgery synthesizer's image operations (bpiml.synth): regions, blending, forgeries, post-processing.

CPU only, no Ray: small crops of scikit-image's bundled photos (read from the installed package).
"""

from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest
import skimage.data

from bpiml.synth import blend, forge, post, regions

HEIGHT, WIDTH = 144, 192  # not square, so a swapped height and width shows


@functools.cache
def _photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    image = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    image.setflags(write=False)  # an operation that writes into its input fails loudly
    return image


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _blob_mask(cx: int, cy: int, radius: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.circle(mask, (cx, cy), radius, 1, -1)
    return mask.astype(bool)


# regions ------------------------------------------------------------------------------------------

def _region_makers():
    shape = np.zeros((40, 90), bool)
    shape[5:35, 10:80] = True
    shape[10:30, 30:60] = False  # a ring-like object
    return {
        "polygon": lambda rng, area: regions.polygon_region(HEIGHT, WIDTH, rng, area),
        "superpixels": lambda rng, area: regions.superpixel_region(_photo("astronaut"), rng, area),
        "shape": lambda rng, area: regions.shape_region(shape, HEIGHT, WIDTH, rng, area),
    }


@pytest.mark.parametrize("method", ["polygon", "superpixels", "shape"])
def test_regions_are_inside_the_image_within_the_area_bounds_and_deterministic(method: str) -> None:
    make = _region_makers()[method]
    for seed in range(6):
        mask = make(_rng(seed), (0.02, 0.08))
        assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
        assert 0.02 * 0.85 <= mask.mean() <= 0.08 * 1.15, (seed, mask.mean())
        assert np.array_equal(mask, make(_rng(seed), (0.02, 0.08)))
    assert not np.array_equal(make(_rng(0), (0.02, 0.08)), make(_rng(1), (0.02, 0.08)))


def test_polygon_and_superpixel_regions_are_one_connected_piece() -> None:
    for seed in range(4):
        for mask in (regions.polygon_region(HEIGHT, WIDTH, _rng(seed)),
                     regions.superpixel_region(_photo("astronaut"), _rng(seed))):
            count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            assert count == 2  # background + one region


def test_a_large_shape_is_shrunk_to_fit_and_a_tiny_target_is_never_empty() -> None:
    long_bar = np.ones((4, 400), bool)
    mask = regions.shape_region(long_bar, HEIGHT, WIDTH, _rng(0), area=(0.5, 0.5))
    assert mask.shape == (HEIGHT, WIDTH)
    assert mask.any(axis=0).sum() == WIDTH and mask.mean() < 0.1  # shrunk to the image width, below the target
    assert regions.polygon_region(HEIGHT, WIDTH, _rng(0), area=(1e-6, 1e-6)).sum() >= 1


def test_random_region_uses_shapes_only_when_given() -> None:
    shape = np.ones((10, 10), bool)
    without = {regions.random_region(_photo("astronaut"), _rng(s))[1] for s in range(30)}
    with_shapes = {regions.random_region(_photo("astronaut"), _rng(s), [shape])[1] for s in range(30)}
    assert without == {"polygon", "superpixels"}
    assert with_shapes == {"polygon", "superpixels", "shape"}


# blending -----------------------------------------------------------------------------------------

def test_feather_keeps_exactly_the_mask_above_one_half() -> None:
    mask = regions.polygon_region(HEIGHT, WIDTH, _rng(3))
    soft = [blend.feather(mask, _rng(seed)) for seed in range(5)]
    for alpha in soft:
        assert alpha.dtype == np.float32 and alpha.shape == mask.shape
        assert alpha.min() >= 0 and alpha.max() <= 1
        assert np.array_equal(alpha > 0.5, mask)
    assert any(((a > 0) & (a < 1)).any() for a in soft)  # some edges really are soft
    assert np.array_equal(blend.feather(mask, _rng(0), max_sigma=0.0), mask.astype(np.float32))


def test_match_colour_moves_region_statistics_toward_the_reference() -> None:
    patch, reference = _photo("astronaut"), _photo("coffee")
    mask = _blob_mask(90, 70, 35)
    everywhere = np.ones((HEIGHT, WIDTH), bool)
    target = blend._lab_stats(reference, everywhere)[0]
    before = np.abs(blend._lab_stats(patch, mask)[0] - target).sum()
    half = blend.match_colour(patch, mask, reference, everywhere, strength=0.5)
    full = blend.match_colour(patch, mask, reference, everywhere, strength=1.0)
    assert half.dtype == np.uint8 and half.shape == patch.shape
    assert before > np.abs(blend._lab_stats(half, mask)[0] - target).sum() > np.abs(
        blend._lab_stats(full, mask)[0] - target).sum()
    assert np.abs(blend._lab_stats(full, mask)[0] - target).max() < 3
    assert np.array_equal(blend.match_colour(patch, mask, reference, everywhere, strength=0.0), patch)


def test_alpha_paste_changes_the_region_and_only_its_feathered_edge() -> None:
    base, patch = _photo("astronaut"), _photo("coffee")
    mask = _blob_mask(90, 70, 30)
    out, used = blend.paste(base, patch, mask, _rng(0), "alpha")
    assert used == "alpha" and out.dtype == np.uint8 and out.shape == base.shape
    near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * blend.FEATHER_MARGIN + 1,) * 2, np.uint8)) > 0
    assert np.array_equal(out[~near], base[~near])
    to_patch = np.abs(out.astype(int) - patch.astype(int)).sum(axis=2)
    to_base = np.abs(out.astype(int) - base.astype(int)).sum(axis=2)
    differ = mask & (np.abs(patch.astype(int) - base.astype(int)).sum(axis=2) > 30)
    assert differ.sum() > 100 and (to_patch < to_base)[differ].mean() > 0.95  # alpha > 0.5 inside: the patch wins
    assert (to_patch > to_base)[~mask & near].mean() > 0.95  # alpha <= 0.5 outside: the base wins


def test_poisson_paste_keeps_the_patch_gradients_in_place() -> None:
    base = (_photo("astronaut") // 2).astype(np.uint8)  # room to brighten without clipping
    patch = base + np.uint8(60)
    mask = _blob_mask(100, 60, 40)
    out, used = blend.paste(base, patch, mask, _rng(0), "poisson")
    assert used == "poisson"
    assert np.array_equal(out[~mask], base[~mask])  # only region pixels are rewritten
    # same gradients as the base and the base's boundary: the solution is the base itself (if aligned)
    assert np.abs(out.astype(int) - base.astype(int))[mask].mean() < 1.5


def test_poisson_paste_handles_regions_on_the_border_and_tiny_ones() -> None:
    base, patch = _photo("astronaut"), _photo("coffee")
    corner = np.zeros((HEIGHT, WIDTH), bool)
    corner[:40, :60] = True
    out, used = blend.paste(base, patch, corner, _rng(0), "poisson")
    assert used == "poisson" and np.array_equal(out[~corner], base[~corner])
    assert np.abs(out.astype(int) - base.astype(int))[corner].mean() > 5
    full_width = np.zeros((HEIGHT, WIDTH), bool)
    full_width[HEIGHT - 20:, :] = True
    assert blend.paste(base, patch, full_width, _rng(0), "poisson")[1] == "poisson"
    dot = np.zeros((HEIGHT, WIDTH), bool)
    dot[0, 0] = True
    out, used = blend.paste(base, patch, dot, _rng(0), "poisson")
    assert used == "alpha" and not np.array_equal(out[0, 0], base[0, 0])
    margin = blend.FEATHER_MARGIN
    assert np.array_equal(out[margin:], base[margin:]) and np.array_equal(out[:, margin:], base[:, margin:])


# forgeries ----------------------------------------------------------------------------------------

def _forge(kind: str, seed: int) -> forge.Forgery:
    return forge.forge(kind, _photo("astronaut"), _photo("coffee"), _rng(seed))


@pytest.mark.parametrize("kind", forge.KINDS)
def test_forgeries_change_the_image_inside_their_mask(kind: str) -> None:
    base = _photo("astronaut")
    blends = set()
    for seed in range(8):
        f = _forge(kind, seed)
        assert f.image.shape == base.shape and f.image.dtype == np.uint8
        assert f.mask.shape == base.shape[:2] and f.mask.dtype == bool
        assert f.mask.mean() >= forge.MIN_AREA
        assert f.info["kind"] == kind
        diff = np.abs(f.image.astype(int) - base.astype(int)).sum(axis=2)
        inside, outside = diff[f.mask].mean(), diff[~f.mask].mean()
        assert inside > 8 * outside and inside > 3, (seed, f.info, inside, outside)
        if kind == "removal":
            assert np.array_equal(f.image[~f.mask], base[~f.mask])
        blends.add(f.info.get("blend"))
    if kind != "removal":
        assert blends == {"alpha", "poisson"}


@pytest.mark.parametrize("kind", forge.KINDS)
def test_forgeries_are_deterministic(kind: str) -> None:
    a, b, c = _forge(kind, 5), _forge(kind, 5), _forge(kind, 6)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes() and a.info == b.info
    assert a.image.tobytes() != c.image.tobytes()


def test_copy_move_pastes_an_exact_copy_apart_from_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _photo("astronaut")
    for seed in range(6):
        f = forge.copy_move(base, _rng(seed))
        assert f.info["mask_covers"] == "target" and list(regions.mask_box(f.mask)) == f.info["target_box"]
        assert 0.7 <= f.info["scale"] <= 1.3 and -30 <= f.info["angle"] <= 30
    # untransformed and hard-edged (no feathering), the copy is the source region's pixels moved by the boxes' offset
    monkeypatch.setattr(forge, "SCALE", (1.0, 1.0))
    monkeypatch.setattr(forge, "ANGLE", (0.0, 0.0))
    monkeypatch.setattr(forge, "FLIP_P", 0.0)
    monkeypatch.setattr(forge, "POISSON_P", 0.0)
    monkeypatch.setattr(blend, "FEATHER_SIGMA", 0.0)
    for seed in range(6):
        f = forge.copy_move(base, _rng(seed))
        sx0, sy0, sx1, sy1 = f.info["source_box"]
        tx0, ty0, tx1, ty1 = f.info["target_box"]
        assert (sx1 - sx0, sy1 - sy0) == (tx1 - tx0, ty1 - ty0)
        copy = f.mask[ty0:ty1, tx0:tx1]
        source = np.zeros_like(f.mask)
        source[sy0:sy1, sx0:sx1] = copy
        assert not (source & f.mask).any()  # apart from its source
        assert np.array_equal(f.image[ty0:ty1, tx0:tx1][copy], base[sy0:sy1, sx0:sx1][copy])
        assert np.array_equal(f.image[~f.mask], base[~f.mask])
        assert np.array_equal(f.image[source], base[source])  # the source itself is untouched


def test_splice_resizes_the_donor_and_uses_shapes() -> None:
    shape = np.ones((30, 30), bool)
    donor = cv2.resize(_photo("coffee"), (77, 51))
    methods = set()
    for seed in range(8):
        f = forge.splice(_photo("astronaut"), donor, _rng(seed), shapes=[shape])
        assert f.info["donor_resized"] and f.image.shape == (HEIGHT, WIDTH, 3)
        methods.add(f.info["region"])
    assert "shape" in methods


@pytest.mark.parametrize("kind", forge.KINDS)
def test_too_small_regions_are_retried_then_rejected(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forge, "MIN_AREA", 0.5)  # above any region's area
    with pytest.raises(ValueError, match=f"{kind}: no usable region in {forge.TRIES} draws"):
        _forge(kind, 0)


def test_copy_move_without_room_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forge, "PLACE_TRIES", 0)  # no place tried is no place found
    with pytest.raises(ValueError, match="no room for a"):
        forge.copy_move(_photo("astronaut"), _rng(0))


def test_forge_info_is_plain_json() -> None:
    for kind in forge.KINDS:
        info = _forge(kind, 1).info
        assert json.loads(json.dumps(info)) == info


# post-processing ----------------------------------------------------------------------------------

def test_random_chain_draws_valid_steps_and_is_deterministic() -> None:
    chains = [post.random_chain(_rng(seed)) for seed in range(60)]
    assert chains[7] == post.random_chain(_rng(7))
    assert all(len(c) <= 3 for c in chains) and any(not c for c in chains)
    kinds = {step.kind for c in chains for step in c}
    assert kinds == {"resize", "blur", "noise", "jpeg"}
    for c in chains:
        assert len({s.kind for s in c}) == len(c)
        for step in c:
            low, high = post.STEPS[step.kind][1:3]
            assert low <= step.value <= high
    assert all(len(post.random_chain(_rng(s), max_steps=1)) <= 1 for s in range(20))
    assert post.random_chain(_rng(0), max_steps=0) == []


def test_apply_chain_keeps_image_and_mask_the_same_size() -> None:
    image, mask = _photo("astronaut"), _blob_mask(90, 70, 30)
    chain = [post.Step("resize", 0.5), post.Step("jpeg", 80), post.Step("resize", 1.37), post.Step("noise", 3.0),
             post.Step("blur", 1.0)]
    out, out_mask = post.apply_chain(image, mask, chain)
    assert out.shape[:2] == out_mask.shape == (round(round(HEIGHT * 0.5) * 1.37), round(round(WIDTH * 0.5) * 1.37))
    assert out_mask.dtype == bool and abs(out_mask.mean() - mask.mean()) < 0.01
    same, same_mask = post.apply_chain(image, mask, [])
    assert np.array_equal(same, image) and np.array_equal(same_mask, mask)
    empty = post.apply_chain(image, np.zeros_like(mask), [post.Step("resize", 0.7)])[1]
    assert not empty.any() and empty.shape == (round(HEIGHT * 0.7), round(WIDTH * 0.7))


def test_random_save_and_describe() -> None:
    saves = [post.random_save(_rng(s)) for s in range(40)]
    assert {fmt for fmt, _ in saves} == {"jpeg", "png"}
    assert all(70 <= q <= 98 for fmt, q in saves if fmt == "jpeg") and all(q == 0 for fmt, q in saves if fmt == "png")
    assert post.describe([post.Step("resize", 0.8), post.Step("jpeg", 75.0)]) == ["resize:0.8", "jpeg:75"]


# bad arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: regions.polygon_region(HEIGHT, WIDTH, _rng(), area=(0.2, 0.1)), "area"),
    (lambda: regions.polygon_region(1, WIDTH, _rng()), "height"),
    (lambda: regions.shape_region(np.zeros((5, 5), bool), HEIGHT, WIDTH, _rng()), "shape_mask"),
    (lambda: regions.superpixel_region(np.zeros((HEIGHT, WIDTH), np.uint8), _rng()), "image"),
    (lambda: blend.feather(np.ones((4, 4), bool), _rng(), max_sigma=-1.0), "max_sigma"),
    (lambda: blend.match_colour(_photo("astronaut"), _blob_mask(50, 50, 9), _photo("coffee"),
                                _blob_mask(50, 50, 9), strength=1.5), "strength"),
    (lambda: blend.paste(_photo("astronaut"), _photo("coffee"), _blob_mask(50, 50, 9), _rng(), "clone"), "method"),
    (lambda: blend.paste(_photo("astronaut"), _photo("coffee"), np.zeros((HEIGHT, WIDTH), bool), _rng(), "alpha"),
     "mask"),
    (lambda: forge.forge("smudge", _photo("astronaut"), None, _rng()), "kind"),
    (lambda: forge.forge("splice", _photo("astronaut"), None, _rng()), "donor"),
    (lambda: forge.splice(_photo("astronaut"), _photo("coffee")[..., 0], _rng()), "donor"),
    (lambda: post.Step("sharpen", 1.0), "kind"),
    (lambda: post.Step("jpeg", 101.0), "value"),
    (lambda: post.random_chain(_rng(), max_steps=-1), "max_steps"),
    (lambda: post.apply_chain(_photo("astronaut"), np.zeros((5, 5), bool), []), "mask"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_a_store_pool_takes_its_train_split_and_never_leaves_the_store(tmp_path) -> None:
    from bpiml.data.manifest import Record, write_manifest
    from bpiml.synth.config import SynthConfig
    from bpiml.synth.pool import photo_pool, shape_pool

    store, outside = tmp_path / "store", tmp_path / "outside.png"
    (store / "images").mkdir(parents=True)
    outside.write_bytes(b"not in the store")
    (store / "images" / "escape.png").symlink_to(outside)
    records = [Record("a-train", "images/a.png", [], split="train"),
               Record("b-val", "images/b.png", [], split="val"),
               Record("c-forged", "images/c.png", [[1, 1, 5, 5]], mask="masks/c.png", split="train"),
               Record("d-forged-test", "images/d.png", [[1, 1, 5, 5]], mask="masks/d.png", split="test"),
               Record("e-escape", "images/escape.png", [], split="train")]
    write_manifest(records, str(store))
    with open(store / "manifest.jsonl", "a") as f:  # a hand-written line the writer would have refused
        f.write(json.dumps({"id": "f-dotdot", "image": "../outside.png", "boxes": [], "split": "train"}) + "\n")
    assert photo_pool(str(store)).paths == ("images/a.png",)  # val/test photos would leak into training
    assert photo_pool(str(store), split="").paths == ("images/a.png", "images/b.png")
    assert photo_pool(str(store), all_photos=True).paths == ("images/a.png", "images/c.png")
    assert shape_pool(str(store)).paths == ("masks/c.png",)
    assert shape_pool(str(store), split="").paths == ("masks/c.png", "masks/d.png")
    with pytest.raises(ValueError, match="split 'val'"):
        shape_pool(str(store), split="val")
    for photos, out in ((tmp_path / "p", tmp_path / "p" / "forged"), (tmp_path / "o" / "photos", tmp_path / "o")):
        with pytest.raises(ValueError, match="must not hold one another"):
            SynthConfig(photos=str(photos), out=str(out)).validate()
