import math

import numpy as np
import pytest
from sklearn import metrics as skm

from sharewise import metrics as M


def test_categorical_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    pred = proba.argmax(1)
    assert M.accuracy(y, proba) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.balanced_accuracy(y, proba) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert M.macro_f1(y, proba) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert M.auroc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_numerical_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    assert M.mae(y, p) == pytest.approx(0.625)
    assert M.rmse(y, p) == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert M.r2(y, p) == pytest.approx(skm.r2_score(y, p))
    assert M.pearson_r(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_delta_formulas_hand_computed():
    # higher is better: (0.9 - 0.8) / 0.8 = +0.125
    assert M.delta_task({"accuracy": 0.9}, {"accuracy": 0.8}, "categorical", ["accuracy"]) == pytest.approx(0.125)
    # lower is better: -(4 - 5) / 5 = +0.2
    assert M.delta_task({"mae": 4.0}, {"mae": 5.0}, "numerical", ["mae"]) == pytest.approx(0.2)
    # two metrics averaged: (+0.2 + (0.5-0.4)/0.4) / 2
    d = M.delta_task({"mae": 4.0, "r2": 0.5}, {"mae": 5.0, "r2": 0.4}, "numerical", ["mae", "r2"])
    assert d == pytest.approx((0.2 + 0.25) / 2)
    assert M.delta_mtl({"a": 0.125, "b": 0.2}) == pytest.approx(16.25)


def test_delta_skips_zero_reference():
    with pytest.warns(UserWarning):
        assert M.delta_task({"r2": 0.3}, {"r2": 0.0}, "numerical", ["r2"]) is None


def test_mean_sd_sample():
    mean, sd, n = M.mean_sd([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and sd == pytest.approx(1.0)


def test_multilabel_metrics():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    s = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1]])
    assert M.hit_at_1(y, s) == 0.5
    # GAP over all 6 predictions sorted by score: .9(hit) .8(miss) .7(hit) .1 .1(hit?) ...
    assert 0 < M.gap_at_k(y, s, 20) <= 1


def test_gap_map_hit_hand_computed():
    # k = 2; video B's third class is a positive outside its top 2, video C finds no positive in its top 2
    y = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.05, 0.0], [0.8, 0.7, 0.1, 0.6], [0.5, 0.4, 0.3, 0.2]])
    # pooled top-2 pairs by score: .9 (1) .8 (0) .7 (1) .5 (0) .4 (0) .1 (0); P = 4 positives
    assert M.gap_at_k(y, s, 2) == pytest.approx((1 / 1 + 2 / 3) / 4)
    # per video: A hits at rank 1 -> 1; B hits at rank 2 -> 1/2; C none -> 0
    assert M.map_at_k(y, s, 2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert M.hit_at_1(y, s) == pytest.approx(1 / 3)
    # k beyond the number of classes uses every class: B finds ranks 2 (class 1) and 3 (class 3 is .6 -> rank 2)
    # B's ranking: .8 (0) .7 (1) .6 (0) .1 (1): precisions 1/2 and 2/4
    assert M.map_at_k(y[1:2], s[1:2], 10) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert M.gap_at_k(y[1:2], s[1:2], 20) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_map_over_positives_kept_beside_taan_map():
    # the same videos as above: the older mAP@10 divides by min(positives, k) and leaves out videos
    # without a positive; TAAN's (map_at_10) divides by the positives found in the top k
    y = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.05, 0.0], [0.8, 0.7, 0.1, 0.6], [0.5, 0.4, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]])
    # A: 1/1; B: hit at rank 2 -> (1/2) / min(2, 2); C: 0 / 1; D: no positive, left out
    assert M.map_at_k_over_positives(y, s, 2) == pytest.approx((1 + 0.25 + 0) / 3)
    assert M.map_at_k(y, s, 2) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert np.isnan(M.map_at_k_over_positives(y[3:], s[3:], 2))
    names = {m.name for m in M.METRICS_BY_KIND["multilabel"]}
    assert {"map_at_10", "map_at_10_over_positives", "gap_at_20", "hit_at_1"} <= names
