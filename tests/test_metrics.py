"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from bpiml.data import metrics


def _mask(rows):
    return np.array(rows, dtype=bool)


def test_f1_iou_hand_computed():
    gt = _mask([[1, 1, 0], [0, 0, 0]])
    prob = np.array([[0.9, 0.2, 0.7], [0.1, 0.5, 0.0]])  # 0.5 is not > 0.5 -> negative
    # TP=1 (0,0), FP=1 (0,2), FN=1 (0,1)
    assert metrics.confusion(prob, gt) == (1, 1, 1, 3)
    assert metrics.pixel_f1(prob, gt) == pytest.approx(2 / 4)
    assert metrics.pixel_iou(prob, gt) == pytest.approx(1 / 3)


def test_empty_and_full_masks():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert metrics.pixel_f1(np.zeros((4, 4)), empty) == 1.0  # documented choice
    assert metrics.pixel_iou(np.zeros((4, 4)), empty) == 1.0
    assert metrics.pixel_f1(np.ones((4, 4)), empty) == 0.0
    assert metrics.pixel_f1(np.zeros((4, 4)), full) == 0.0
    assert metrics.pixel_f1(np.ones((4, 4)), full) == 1.0
    assert math.isnan(metrics.pixel_auc(np.random.rand(4, 4), full))
    assert math.isnan(metrics.pixel_auc(np.random.rand(4, 4), empty))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.pixel_f1(np.zeros((2, 3)), np.zeros((3, 2), bool))


def test_rank_auc_with_ties():
    # positives 0.8, 0.5 ; negatives 0.5, 0.2 -> pairs: (0.8>0.5)=1,(0.8>0.2)=1,(0.5=0.5)=0.5,(0.5>0.2)=1
    auc = metrics.rank_auc(np.array([0.8, 0.5, 0.5, 0.2]), np.array([1, 1, 0, 0]))
    assert auc == pytest.approx(3.5 / 4)
    # all tied -> 0.5
    assert metrics.rank_auc(np.full(6, 0.3), np.array([1, 0, 1, 0, 0, 0])) == pytest.approx(0.5)
    # perfect and inverted
    assert metrics.rank_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert metrics.rank_auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0


def test_rank_auc_matches_pairwise_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60) / 4.0  # many ties
    labels = rng.random(60) > 0.6
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert metrics.rank_auc(scores, labels) == pytest.approx(brute)


def test_image_level_metrics():
    scores = [0.9, 0.6, 0.4, 0.2, 0.7]
    labels = [True, True, True, False, False]
    # TPR = 2/3 (0.4 missed), TNR = 1/2 (0.7 false alarm) -> bacc = 7/12
    out = metrics.detection_metrics(scores, labels)
    assert out["image_bacc"] == pytest.approx(7 / 12)
    # AUC pairs: pos {0.9,0.6,0.4} vs neg {0.2,0.7}: 0.9:2, 0.6:1, 0.4:1 -> 4/6
    assert out["image_auc"] == pytest.approx(4 / 6)
    assert math.isnan(metrics.detection_metrics([0.1, 0.2], [True, True])["image_auc"])


def test_image_row_and_summary_exclude_authentic_from_pixel_means():
    gt = _mask([[1, 0], [0, 0]])
    rows = [
        metrics.image_row(np.array([[0.9, 0.1], [0.1, 0.1]]), gt),  # perfect: f1=1, auc=1
        metrics.image_row(np.array([[0.1, 0.9], [0.1, 0.1]]), gt),  # f1=0, auc: pos 0.1 vs neg .9,.1,.1 -> (0+.5+.5)/3
        metrics.image_row(np.array([[0.2, 0.3], [0.1, 0.1]]), None),  # authentic, score 0.3
        metrics.image_row(np.array([[0.8, 0.3], [0.1, 0.1]]), np.zeros((2, 2), bool)),  # all-zero mask = authentic
    ]
    assert rows[2]["manipulated"] is False and math.isnan(rows[2]["f1"])
    assert rows[1]["auc"] == pytest.approx(1 / 3)
    s = metrics.summarize(rows)
    assert s["n_images"] == 4 and s["n_manipulated"] == 2 and s["n_authentic"] == 2
    assert s["pixel_f1"] == pytest.approx(0.5)
    assert s["pixel_iou"] == pytest.approx(0.5)
    assert s["pixel_auc"] == pytest.approx((1 + 1 / 3) / 2)
    # image: scores pos .9,.9 neg .3,.8 -> AUC 1; bacc: TPR 1, TNR 1/2
    assert s["image_auc"] == pytest.approx(1.0)
    assert s["image_bacc"] == pytest.approx(0.75)


def test_summary_without_authentic_has_no_image_metrics():
    gt = _mask([[1, 0]])
    s = metrics.summarize([metrics.image_row(np.array([[0.9, 0.0]]), gt)])
    assert math.isnan(s["image_auc"]) and math.isnan(s["image_bacc"])


def test_boundary_f1():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    assert metrics.boundary_f1(a, a) == 1.0
    b = np.zeros_like(a)
    b[6:16, 5:15] = True  # shifted by one row
    assert metrics.boundary_f1(b, a, tolerance=1) == 1.0
    assert 0.0 < metrics.boundary_f1(b, a, tolerance=0) < 1.0
    assert metrics.boundary_f1(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert metrics.boundary_f1(np.zeros_like(a), a) == 0.0
    # inner boundary of a 10x10 square: 36 pixels; a full-image mask has no boundary
    assert metrics.boundary(a).sum() == 36
    assert metrics.boundary(np.ones((5, 5), bool)).sum() == 0


def test_boundary_f1_tolerance_zero_hand_computed():
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True  # boundary: 8 pixels (3x3 minus centre)
    b = np.zeros_like(a)
    b[2:5, 3:6] = True  # shifted right by one: boundary 8 pixels
    # shared boundary pixels: columns 3,4 of rows 2 and 4 -> 4 pixels, plus (3,3)? (3,3) is the centre
    # of a (not a boundary) but a boundary of b (left column). (3,4) is the centre of b, boundary of a.
    pb, gb = metrics.boundary(b), metrics.boundary(a)
    shared = int((pb & gb).sum())
    assert shared == 4
    assert metrics.boundary_f1(b, a, tolerance=0) == pytest.approx(4 / 8)


def test_mean_accumulator_skips_nan():
    acc = metrics.MeanAccumulator()
    acc.add({"f1": 1.0, "auc": math.nan})
    acc.add({"f1": 0.5, "auc": 0.25, "flag": True})
    assert acc.means() == {"f1": 0.75, "auc": 0.25}
    assert acc.counts() == {"f1": 2, "auc": 1}
    assert acc.images == 2
    assert math.isnan(acc.mean("missing"))
