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


# the hand-written formulas sharewise used before sklearn.metrics computed them: the figures recorded
# in benchmarks/results/runs/ came from these, so the library's values must equal them bit for bit
def _accuracy(y, proba):
    return float(np.mean(proba.argmax(1) == y))


def _balanced_accuracy(y, proba):
    pred = proba.argmax(1)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _macro_f1(y, proba):
    pred = proba.argmax(1)
    scores = []
    for c in np.union1d(np.unique(y), np.unique(pred)):
        tp, fp, fn = np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _r2(y, p):
    return 1.0 - float(np.sum((y - p) ** 2)) / float(np.sum((y - y.mean()) ** 2))


def test_sklearn_metrics_equal_the_recorded_formulas_bit_for_bit():
    rng = np.random.default_rng(7)
    for trial in range(300):
        n, classes = int(rng.integers(2, 300)), int(rng.integers(2, 9))
        y = rng.integers(0, classes, n)
        logits = rng.normal(size=(n, classes)) * rng.uniform(0.1, 5)
        if trial % 3 == 0:
            logits = np.round(logits, 1)  # tied scores
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        proba = proba.astype(np.float32) if trial % 2 else proba  # the evaluation's softmax is float32
        assert M.accuracy(y, proba) == _accuracy(y, proba)
        assert M.balanced_accuracy(y, proba) == _balanced_accuracy(y, proba)
        assert M.macro_f1(y, proba) == _macro_f1(y, proba)
        target = rng.normal(size=n) * 10
        pred = target + rng.normal(size=n) * rng.uniform(0.01, 3)
        pred = pred.astype(np.float32) if trial % 2 else pred  # the evaluation's outputs are float32
        assert M.mae(target, pred) == float(np.mean(np.abs(pred - target)))
        assert M.rmse(target, pred) == float(np.sqrt(np.mean((pred - target) ** 2)))
        assert M.r2(target, pred) == _r2(target, pred)


def test_categorical_edge_cases():
    # a predicted class absent from the labels: balanced accuracy over the labels' classes only, no warning
    y = np.array([0, 0, 1, 1])
    proba = np.eye(3)[[0, 2, 1, 1]]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.balanced_accuracy(y, proba) == pytest.approx((0.5 + 1.0) / 2)
        # class 2 is predicted but never right: F1 0 for it, counted in the macro mean
        assert M.macro_f1(y, proba) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    empty = np.zeros((0, 3))
    assert all(math.isnan(f(np.zeros(0, int), empty)) for f in (M.accuracy, M.balanced_accuracy, M.macro_f1))
    assert math.isnan(M.r2(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0])))  # targets do not vary
    assert math.isnan(M.mae(np.zeros(0), np.zeros(0)))
