"""Seeded, stratified train/val/test splits, user-given split columns, and train1/train2.

Protocol point 1: stratify on the first categorical target (numerical-only: quantile bins of the
first numerical target); keep a group's examples in one split when a group column is given; a
multi-task example lives in one split for all tasks; impossible ratios or empty splits are
configuration errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..seeding import np_rng

SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "te": "test",
}


def check_ratios(ratios: Sequence[float], *, names: Sequence[str] = ("train", "val", "test")) -> tuple[float, ...]:
    """Ratios must be non-negative, give train a positive share, and sum to 1."""
    r = tuple(float(x) for x in ratios)
    if len(r) != len(names):
        raise ConfigError(f"split.ratios: expected {len(names)} values ({'/'.join(names)}), got {len(r)}")
    if any(not np.isfinite(x) or x < 0 for x in r):
        raise ConfigError(f"split.ratios: every ratio must be >= 0, got {list(r)}")
    if r[0] <= 0:
        raise ConfigError(f"split.ratios: the train ratio must be > 0, got {list(r)}")
    if abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split.ratios: must sum to 1, got {list(r)} (sum {sum(r):g})")
    return r


def strata_from_targets(raw_targets: pd.DataFrame, cat: Sequence[str], num: Sequence[str], bins: int = 5) -> np.ndarray:
    """Stratum label per row: first categorical target, else quantile bin of the first numerical one."""
    n = len(raw_targets)
    if cat:
        col = raw_targets[cat[0]]
        return np.where(col.isna(), "<missing>", col.astype(str)).astype(object)
    if num:
        col = pd.to_numeric(raw_targets[num[0]], errors="coerce")
        labels = np.full(n, "<missing>", dtype=object)
        known = col.notna().to_numpy()
        if known.sum() >= bins:
            q = pd.qcut(col[known], q=bins, labels=False, duplicates="drop")
            labels[known] = q.astype(str).to_numpy()
        else:
            labels[known] = "all"
        return labels
    return np.full(n, "all", dtype=object)


def _allocate(count: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``count`` items to the ratios."""
    exact = np.asarray(ratios) * count
    alloc = np.floor(exact).astype(int)
    rest = count - alloc.sum()
    order = np.argsort(-(exact - alloc), kind="stable")
    for k in order[:rest]:
        alloc[k] += 1
    return alloc.tolist()


def _sequence(counts: Sequence[int]) -> np.ndarray:
    """Split indices for ``sum(counts)`` positions, spread evenly: position i goes to the split most
    behind its share ``counts_k (i + 1) / n`` (ties: the first), so every stretch of positions, and so
    every stratum laid out in a stretch, gets each split's share to within about one row."""
    counts = np.asarray(counts, dtype=float)
    n = int(counts.sum())
    taken = np.zeros(len(counts))
    out = np.empty(n, dtype=int)
    for i in range(n):
        k = int(np.argmax(counts * (i + 1) / n - taken))
        out[i] = k
        taken[k] += 1
    return out


def stratified_split(
    strata: np.ndarray, ratios: Sequence[float], seed: int, *, names: Sequence[str] = ("train", "val", "test"),
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Seeded split of rows ``0..n−1``; with ``groups``, whole groups are assigned together."""
    ratios = check_ratios(ratios, names=names)
    rng = np_rng(seed, "split")
    n = len(strata)
    if groups is not None:
        uniq, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        perm = rng.permutation(len(uniq))
        alloc = _allocate(len(uniq), ratios)
        group_split = np.empty(len(uniq), dtype=int)
        pos = 0
        for k, c in enumerate(alloc):
            group_split[perm[pos:pos + c]] = k
            pos += c
        assign = group_split[inverse]
    else:
        assign = np.empty(n, dtype=int)
        strata = np.asarray(strata).astype(str)
        shuffled = []
        for s in np.unique(strata):
            rows = np.flatnonzero(strata == s)
            rows = rows[rng.permutation(len(rows))]
            shuffled.append(rows)
            pos = 0
            for k, c in enumerate(_allocate(len(rows), ratios)):
                assign[rows[pos:pos + c]] = k
                pos += c
        if any(r > 0 and not (assign == k).any() for k, r in enumerate(ratios)):
            # many small strata (e.g. quantile bins of 4 rows): rounding each one alone starves the
            # small splits; allocate over the whole set instead, stratum after stratum
            assign[np.concatenate(shuffled)] = _sequence(_allocate(n, ratios))
    out = {name: np.flatnonzero(assign == k) for k, name in enumerate(names)}
    for name, r in zip(names, ratios):
        if r > 0 and len(out[name]) == 0:
            raise ConfigError(
                f"split.ratios: the {name} split would be empty ({n} examples, ratios {list(ratios)}); "
                "use more data or larger ratios"
            )
    return out


def split_from_column(values: pd.Series, column: str) -> dict[str, np.ndarray]:
    """A user-given split column with values train/val/test (aliases accepted).

    Train and val must each have a row (selection needs a validation score); an empty test
    split is allowed, with a warning."""
    norm = values.astype(str).str.strip().str.lower()
    unknown = sorted(set(norm) - set(SPLIT_ALIASES))
    if unknown:
        raise DataError(f"split column {column!r}: unknown value(s) {unknown[:5]}; use train, val or test")
    mapped = norm.map(SPLIT_ALIASES).to_numpy()
    out = {name: np.flatnonzero(mapped == name) for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if len(out[name]) == 0:
            marks = ", ".join(sorted(a for a, n in SPLIT_ALIASES.items() if n == name))
            raise DataError(
                f"split column {column!r}: the {name} split would be empty ({len(mapped)} examples, "
                f"no row is marked {marks})"
            )
    if len(out["test"]) == 0:
        warnings.warn(f"split column {column!r}: no row is marked test; the run has no test split")
    return out


def carve_train(train: np.ndarray, seed: int, fraction: float = 0.5) -> dict[str, np.ndarray]:
    """A seeded disjoint ``train1``/``train2`` partition of ``train`` (AdaShare §8)."""
    rng = np_rng(seed, "split", 1)
    perm = rng.permutation(train)
    k = int(round(len(perm) * fraction))
    return {"train1": np.sort(perm[:k]), "train2": np.sort(perm[k:])}
