"""Per-task metrics with their direction, and the relative improvement Δ_MTL.

Every metric is computed over a whole split from gathered predictions (never a mean of
per-batch values), on the rows where the task's target is present; numerical metrics are in
the target's original units (evaluation protocol, points 4 and 5).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A named metric ``fn(y_true, y_score) -> float`` and whether higher is better."""

    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------- categorical
# y_true: (n,) int class indices; y_score: (n, C) probabilities. Through ``sklearn.metrics``
# (imported on first use), each verified bit-identical to the hand-written versions it replaced
# (tests/test_metrics.py); an empty split gives NaN.

def _sklearn():
    from sklearn import metrics

    return metrics


def accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    return float(_sklearn().accuracy_score(y_true, proba.argmax(1))) if len(y_true) else math.nan


def balanced_accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the per-class recall (a predicted class
    absent from ``y_true`` has no recall and is left out, which sklearn warns about)."""
    if not len(y_true):
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(_sklearn().balanced_accuracy_score(y_true, proba.argmax(1)))


def macro_f1(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Unweighted mean of per-class F1 ``2 tp / (2 tp + fp + fn)`` over the classes present in
    labels or predictions."""
    if not len(y_true):
        return math.nan
    return float(_sklearn().f1_score(y_true, proba.argmax(1), average="macro", zero_division=0.0))


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest macro AUROC over the classes present (NaN when fewer than two).

    Kept as the Mann-Whitney rank formula: ``sklearn.metrics.roc_auc_score`` (trapezoids under the
    ROC curve) is equal in exact arithmetic but differs in the last bit on about one split in five,
    which would move the recorded figures (docs/ARCHITECTURE.md, "Metrics")."""
    present = np.unique(y_true)
    if len(present) < 2:
        return math.nan
    aucs = [_binary_auc(y_true == c, proba[:, c]) for c in present]
    return float(np.mean(aucs))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- numerical
# y_true, y_pred: (n,) float in original units; through ``sklearn.metrics`` (bit-identical to
# the hand-written versions they replaced).

def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(_sklearn().mean_absolute_error(y_true, y_pred)) if len(y_true) else math.nan


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(_sklearn().root_mean_squared_error(y_true, y_pred)) if len(y_true) else math.nan


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``1 − SS_res / SS_tot`` with SS_tot from the same split's targets; NaN when the targets do
    not vary (where sklearn would report 0 or 1 by convention)."""
    if len(y_true) < 2 or float(np.ptp(y_true)) == 0.0:
        return math.nan
    return float(_sklearn().r2_score(y_true, y_pred))


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson's correlation (``numpy.corrcoef``; sklearn has it only as a feature-selection score)."""
    if len(y_true) < 2 or np.std(y_true) == 0 or np.std(y_pred) == 0:
        return math.nan
    return float(np.corrcoef(y_true, y_pred)[0, 1])


# ---------------------------------------------------------------- multilabel
# y_true: (n, C) {0,1}; y_score: (n, C) probabilities. Hand-written: sklearn has no top-k
# multilabel metric of these definitions (YouTube-8M's GAP@k, TAAN's mAP@k, Hit@1).

def gap_at_k(y_true: np.ndarray, score: np.ndarray, k: int = 20) -> float:
    """Global average precision of the top-k predictions of every example (the YouTube-8M GAP@k).

    Every example contributes its top ``min(k, C)`` (score, label) pairs; the pooled pairs are sorted
    by score and ``GAP = (1/P) Σ_i precision@i · y_(i)`` with ``P`` the number of positive labels of
    all examples, including positives outside every top-k (so a missed positive lowers GAP).
    """
    if not len(y_true):
        return math.nan
    y_true = np.asarray(y_true, dtype=float)
    k = min(k, score.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    conf = np.take_along_axis(score, top, 1).ravel()
    hit = np.take_along_axis(y_true, top, 1).ravel()
    n_pos = float(y_true.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-conf, kind="stable")
    hit = hit[order]
    precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    return float(np.sum(precision * hit) / n_pos)


def map_at_k(y_true: np.ndarray, score: np.ndarray, k: int = 10) -> float:
    """Mean over examples of the average precision of each example's top ``min(k, C)`` classes
    (the TAAN reference's "mAP@10"): ``AP_v = (1/n_v) Σ_{i ≤ k, y_(i) = 1} precision@i`` with
    ``n_v`` the positives found among the top k, and ``AP_v = 0`` when there are none.

    Recall is relative to the positives found in the top k, so it is optimistic; report GAP beside it.
    """
    if not len(y_true):
        return math.nan
    _, hit, precision = _top_k_hits(y_true, score, k)
    found = hit.sum(1)
    ap = np.divide((precision * hit).sum(1), found, out=np.zeros(len(found)), where=found > 0)
    return float(ap.mean())


def _top_k_hits(y_true: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels as floats, ``hit`` (N, k): the labels of each example's top-k classes by score,
    ``precision`` (N, k): precision@i of those), k capped at the number of classes."""
    y_true = np.asarray(y_true, dtype=float)
    k = min(k, score.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    hit = np.take_along_axis(y_true, top, 1)
    return y_true, hit, np.cumsum(hit, 1) / np.arange(1, k + 1)


def map_at_k_over_positives(y_true: np.ndarray, score: np.ndarray, k: int = 10) -> float:
    """Mean over labelled examples of the average precision of each example's top ``min(k, C)``
    classes, normalised by the example's positives: ``AP_v = (1/min(P_v, k)) Σ_{i ≤ k, y_(i) = 1}
    precision@i`` with ``P_v`` the example's positives (a positive outside the top k lowers AP_v);
    examples without a positive are left out. sharewise's mAP@10 before the TAAN definition
    (:func:`map_at_k`) was added; registered as ``map_at_10_over_positives``.
    """
    if not len(y_true):
        return math.nan
    y_true, hit, precision = _top_k_hits(y_true, score, k)
    n_rel = np.minimum(y_true.sum(1), hit.shape[1])
    keep = n_rel > 0
    if not keep.any():
        return math.nan
    return float(((precision * hit).sum(1)[keep] / n_rel[keep]).mean())


def hit_at_1(y_true: np.ndarray, score: np.ndarray) -> float:
    """Mean over examples of the label of the top-scored class."""
    if not len(y_true):
        return math.nan
    top = score.argmax(1)
    return float(np.mean(np.asarray(y_true)[np.arange(len(top)), top] > 0))


CATEGORICAL_METRICS = (
    Metric("accuracy", True, accuracy),
    Metric("balanced_accuracy", True, balanced_accuracy),
    Metric("macro_f1", True, macro_f1),
    Metric("auroc", True, auroc),
)
NUMERICAL_METRICS = (
    Metric("mae", False, mae),
    Metric("rmse", False, rmse),
    Metric("r2", True, r2),
    Metric("pearson_r", True, pearson_r),
)
MULTILABEL_METRICS = (
    Metric("gap_at_20", True, gap_at_k),
    Metric("map_at_10", True, map_at_k),
    Metric("map_at_10_over_positives", True, map_at_k_over_positives),
    Metric("hit_at_1", True, hit_at_1),
)
METRICS_BY_KIND: dict[str, tuple[Metric, ...]] = {
    "categorical": CATEGORICAL_METRICS,
    "numerical": NUMERICAL_METRICS,
    "multilabel": MULTILABEL_METRICS,
}
PRIMARY_METRIC = {"categorical": "accuracy", "numerical": "mae", "multilabel": "gap_at_20"}


def higher_is_better(kind: str, metric: str) -> bool:
    for m in METRICS_BY_KIND[kind]:
        if m.name == metric:
            return m.higher_is_better
    raise KeyError(f"unknown metric {metric!r} for a {kind} task")


# ---------------------------------------------------------------- Δ_MTL

def delta_task(
    method: Mapping[str, float], reference: Mapping[str, float], kind: str, metrics: Sequence[str]
) -> float | None:
    """Δ_t = (1/|M_t|) Σ_m (−1)^{l_m} (M_m − B_m) / |B_m|  (protocol point 5).

    Metrics whose reference is |B| < 1e-12 or missing are skipped with a warning; returns None
    when none is left.
    """
    terms = []
    for name in metrics:
        if name not in method or name not in reference:
            warnings.warn(f"Δ_t: metric {name!r} missing from the method or the reference; skipped")
            continue
        base = float(reference[name])
        if not math.isfinite(base) or abs(base) < 1e-12:
            warnings.warn(f"Δ_t: reference {name} = {base} is too close to 0; skipped")
            continue
        sign = 1.0 if higher_is_better(kind, name) else -1.0
        terms.append(sign * (float(method[name]) - base) / abs(base))
    return float(np.mean(terms)) if terms else None


def delta_mtl(deltas: Mapping[str, float | None]) -> float | None:
    """Δ_MTL = 100 % · mean over tasks of Δ_t (tasks without a Δ_t are left out)."""
    vals = [d for d in deltas.values() if d is not None]
    return 100.0 * float(np.mean(vals)) if vals else None


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n − 1; NaN for n = 1) and n."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan, 0
    sd = float(arr.std(ddof=1)) if n > 1 else math.nan
    return float(arr.mean()), sd, n
