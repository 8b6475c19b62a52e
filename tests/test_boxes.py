"""Boxes: from mask components (min_area, merging), pad / jitter bounds, sanitize."""

from __future__ import annotations

import numpy as np
import pytest

from bpiml.data.boxes import (
    boxes_from_mask,
    jitter_boxes,
    merge_boxes,
    pad_boxes,
    sanitize_boxes,
)


def _mask(*rects, shape=(100, 120)):
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def test_tight_exclusive_boxes_sorted():
    m = _mask((50, 60, 70, 70), (10, 5, 20, 15))
    assert boxes_from_mask(m, merge_distance=-1) == [[10, 5, 20, 15], [50, 60, 70, 70]]


def test_eight_connectivity_joins_diagonal_pixels():
    m = _mask((0, 0, 4, 4), (4, 4, 8, 8))  # touching corners only
    assert boxes_from_mask(m, merge_distance=-1, min_area=1) == [[0, 0, 8, 8]]


def test_min_area_drops_small_components():
    m = _mask((10, 10, 30, 30), (60, 60, 63, 63))  # 400 px and 9 px
    assert boxes_from_mask(m, min_area=16) == [[10, 10, 30, 30]]
    assert len(boxes_from_mask(m, min_area=9, merge_distance=-1)) == 2
    assert boxes_from_mask(np.zeros((5, 5), bool)) == []


def test_merge_distance_gap_rule():
    m = _mask((10, 10, 20, 20), (25, 10, 35, 20))  # 5 background columns between
    assert len(boxes_from_mask(m, merge_distance=4)) == 2
    assert boxes_from_mask(m, merge_distance=5) == [[10, 10, 35, 20]]


def test_merge_repeats_until_stable():
    # a and b touch; c is 12 px from a and 5 px from b, but only 2 px from their union
    a, b, c, far = [0, 0, 10, 10], [10, 10, 20, 20], [22, 0, 30, 5], [100, 100, 110, 110]
    assert sorted(merge_boxes([a, b, c, far], 3)) == [[0, 0, 30, 20], far]
    assert sorted(merge_boxes([a, b, c, far], 0)) == [[0, 0, 20, 20], c, far]


def test_overlapping_components_merge_at_zero():
    m = _mask((10, 10, 40, 40))
    m[15:35, 15:35] = False  # a ring
    m[24:27, 24:27] = True  # a dot inside it
    assert boxes_from_mask(m, merge_distance=0, min_area=1) == [[10, 10, 40, 40]]
    assert len(boxes_from_mask(m, merge_distance=-1, min_area=1)) == 2


def test_pad_grows_by_side_and_clips():
    assert pad_boxes([[10, 20, 30, 60]], 0.1, 100, 100) == [[8.0, 16.0, 32.0, 64.0]]
    assert pad_boxes([[0, 0, 10, 100]], 0.5, 12, 100) == [[0.0, 0.0, 12.0, 100.0]]
    with pytest.raises(ValueError, match="pad"):
        pad_boxes([[0, 0, 1, 1]], -0.1, 10, 10)


def test_jitter_bounds_and_determinism():
    boxes = [[20, 20, 60, 40], [0, 0, 10, 10], [90, 90, 100, 100]]
    a = jitter_boxes(boxes, 0.2, np.random.default_rng(1), 100, 100)
    b = jitter_boxes(boxes, 0.2, np.random.default_rng(1), 100, 100)
    assert a == b
    for (x0, y0, x1, y1), (j0, k0, j1, k1) in zip(boxes, a):
        w, h = x1 - x0, y1 - y0
        assert abs(j0 - x0) <= 0.2 * w + 1e-9 and abs(j1 - x1) <= 0.2 * w + 1e-9
        assert abs(k0 - y0) <= 0.2 * h + 1e-9 and abs(k1 - y1) <= 0.2 * h + 1e-9
        assert 0 <= j0 < j1 <= 100 and 0 <= k0 < k1 <= 100
    assert jitter_boxes(boxes, 0.0, np.random.default_rng(0), 100, 100) == [list(map(float, b)) for b in boxes]
    with pytest.raises(ValueError, match="jitter"):
        jitter_boxes(boxes, 0.5, np.random.default_rng(0), 100, 100)


def test_sanitize_clips_and_drops_with_notes():
    boxes = [[-5, -5, 20, 20], [10, 10, 5, 30], [float("nan"), 0, 4, 4], [0, 0, float("inf"), 3],
             [50, 50, 60, 60], [200, 200, 300, 300], [1, 2, 3], "junk", [1, 1, 1.5, 9]]
    arr, notes = sanitize_boxes(boxes, 100, 80)
    assert arr.dtype == np.float32 and arr.shape == (2, 4)
    np.testing.assert_array_equal(arr, [[0, 0, 20, 20], [50, 50, 60, 60]])
    assert "clipped 1 box to the image 100x80" in notes
    assert any(n.startswith("dropped 5 degenerate boxes [") for n in notes)
    assert any(n.startswith("dropped 2 malformed boxes") for n in notes)


def test_sanitize_accepts_arrays_and_empty():
    arr, notes = sanitize_boxes(np.array([[1, 1, 5, 5]], np.float64), 10, 10)
    assert arr.tolist() == [[1, 1, 5, 5]] and notes == []
    for empty in (None, [], np.zeros((0, 4))):
        arr, notes = sanitize_boxes(empty, 10, 10)
        assert arr.shape == (0, 4) and notes == []
    arr, notes = sanitize_boxes(42, 10, 10)  # not a list at all: one malformed entry, no exception
    assert arr.shape == (0, 4) and "malformed" in notes[0]
