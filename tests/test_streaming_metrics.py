"""Partial statistics of evaluation: merged block sums give `metrics.summarize`'s values over the same rows."""

import math

import numpy as np
import pytest

from bpiml.data import metrics
from bpiml.evaluation import streaming_metrics as sm
from bpiml.evaluation import tables


def _rows(rng, n, set_name="a", degradation="none", near_one=False):
    """Per-image rows as the Evaluator writes them: nan pixel metrics for authentic images, some nan AUCs."""
    rows = []
    for i in range(n):
        manipulated = bool(rng.random() < 0.6)
        if near_one:  # a confident model: max probabilities within 1e-4 of 1
            score = 1.0 - float(rng.uniform(0, 1e-4 if manipulated else 3e-4))
        else:
            score = float(np.clip(rng.normal(0.65 if manipulated else 0.45, 0.2), 0.0, 1.0))
        rows.append({
            "set": set_name, "degradation": degradation, "id": f"i{i}", "manipulated": manipulated, "score": score,
            "f1": float(rng.random()) if manipulated else math.nan,
            "iou": float(rng.random()) if manipulated else math.nan,
            "auc": float(rng.random()) if manipulated and rng.random() < 0.9 else math.nan,
            "area": float(rng.random()) if rng.random() < 0.95 else math.nan,
            "error": "" if rng.random() < 0.97 else "OSError: unreadable",
        })
    return rows


def _merged(rows, threshold=0.5, block=37):
    """Block sums added up as the counter actor adds them."""
    totals: dict = {}
    for start in range(0, len(rows), block):
        for key, value in sm.block_sums(rows[start:start + block], threshold).items():
            totals[key] = totals.get(key, 0) + value
    return sm.collect(totals)


@pytest.mark.parametrize("near_one", [False, True])
def test_histogram_auc_matches_the_exact_auc(near_one):
    rng = np.random.default_rng(3)
    for n in (50, 2000, 20000):
        rows = [r for r in _rows(rng, n, near_one=near_one) if not r["error"]]
        exact = metrics.rank_auc([r["score"] for r in rows], [r["manipulated"] for r in rows])
        stats = _merged(rows)[("a", "none")]
        assert abs(stats.auc() - exact) <= stats.tie_bound() + 1e-12 and abs(stats.auc() - exact) < 1e-3, n


def test_merged_partials_equal_summarize_on_the_same_rows():
    rng = np.random.default_rng(0)
    rows = _rows(rng, 3000) + _rows(rng, 500, set_name="b") + _rows(rng, 800, degradation="jpeg:70")
    merged = _merged(rows, threshold=0.4)
    assert set(merged) == {("a", "none"), ("b", "none"), ("a", "jpeg:70")}
    for (name, deg), stats in merged.items():
        kept = [r for r in rows if r["set"] == name and r["degradation"] == deg and not r["error"]]
        want, got = metrics.summarize(kept, 0.4), stats.summary()
        assert set(got) == set(want)
        for key in ("n_images", "n_manipulated", "n_authentic", "image_bacc"):  # counts and rates: exactly
            assert got[key] == want[key], key
        for key in ("pixel_f1", "pixel_iou", "pixel_auc", "authentic_area"):  # sums in another order
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
        assert abs(got["image_auc"] - want["image_auc"]) < 1e-3
        failed = sum(1 for r in rows if r["set"] == name and r["degradation"] == deg and r["error"])
        assert stats.get("failed") == failed > 0
    pooled = (merged[("a", "none")] + merged[("b", "none")]).summary()
    both = metrics.summarize([r for r in rows if r["degradation"] == "none" and not r["error"]], 0.4)
    assert pooled["n_images"] == both["n_images"] and pooled["pixel_f1"] == pytest.approx(both["pixel_f1"], rel=1e-12)


def test_edge_cases_follow_summarize():
    one_class = [{"set": "a", "degradation": "none", "manipulated": True, "score": 0.9, "f1": 1.0, "iou": 1.0,
                  "auc": math.nan, "area": 0.1, "error": ""}]
    got, want = _merged(one_class)[("a", "none")].summary(), metrics.summarize(one_class)
    assert math.isnan(got["image_auc"]) and math.isnan(got["image_bacc"]) and math.isnan(got["pixel_auc"])
    assert math.isnan(got["authentic_area"]) and got["pixel_f1"] == want["pixel_f1"] == 1.0
    authentic = [{**one_class[0], "manipulated": False, "score": s, "f1": math.nan, "iou": math.nan} for s in (0.2, 0.7)]
    got, want = _merged(authentic)[("a", "none")].summary(), metrics.summarize(authentic)
    assert math.isnan(got["image_auc"]) and got["image_bacc"] == want["image_bacc"] == 0.5
    assert got["authentic_area"] == pytest.approx(want["authentic_area"])
    tied = one_class + [{**authentic[0], "score": 0.9}]  # equal scores: one half, as the exact AUC
    assert _merged(tied)[("a", "none")].summary()["image_auc"] == metrics.summarize(tied)["image_auc"] == 0.5
    bins = sm.score_bins(np.array([0.0, 1e-9, 0.5 - 1e-6, 0.5, 0.9999, 1.0 - 1e-7, 1.0, math.nan]))
    assert (np.diff(bins[:-1]) >= 0).all() and bins[0] == bins[-1] == 0 and bins[-2] == sm.BINS - 1
    assert sm.collect({"images": 3.0}) == {}  # progress counts beside the statistics are ignored


def test_stats_table_equals_aggregate_on_separable_scores():
    rng = np.random.default_rng(1)
    rows = _rows(rng, 400) + _rows(rng, 300, set_name="b")
    for r in rows:  # scores far apart: no (manipulated, authentic) pair shares a histogram bin
        r["score"] = 0.6 + 0.3 * (int(r["id"][1:]) % 7) / 7 if r["manipulated"] else 0.1 + 0.05 * (int(r["id"][1:]) % 5)
    exact = tables.aggregate(rows, ["a", "b"], {"g": ["a", "b"]}, ["none"])
    streamed = tables.stats_table(_merged(rows), ["a", "b"], {"g": ["a", "b"]}, ["none"])
    for got, want in zip(streamed, exact):
        assert {k: got[k] for k in ("kind", "name", *tables.COUNT_KEYS)} == {k: want[k] for k in ("kind", "name", *tables.COUNT_KEYS)}
        assert set(got) == set(want)
        for key in set(tables.METRIC_KEYS) | ({"authentic_area"} & set(want)):
            assert got[key] == pytest.approx(want[key], rel=1e-12), (got["name"], key)
