"""Task similarity of learned allocations (spec §6, §7.3) as pure functions.

``S_st = cos(a_s, a_t)`` of the tasks' concatenated allocation vectors over every routed layer;
a task whose vector is all zero has S = 0 with every task (itself included) and is flagged (the
reference returned NaN). The binary variant uses ``1[p ≥ 0.5]``, the soft variant ``p`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np


def cosine_similarity(vectors: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``(S, zero_rows)``: cosine similarity of the rows of ``vectors`` (T, D); S = 0 where either
    row is all zero, those rows' indices listed."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    zero = norms == 0
    safe = np.where(zero, 1.0, norms)
    s = (v @ v.T) / np.outer(safe, safe)
    s[zero, :] = 0.0
    s[:, zero] = 0.0
    return s, [int(i) for i in np.flatnonzero(zero)]


def family_of(name: str) -> str:
    """A task's family from its name: a trailing copy number dropped (``mnist_rot_2`` -> ``mnist_rot``)."""
    return re.sub(r"[_\-.]?\d+$", "", name) or name


def family_separation(similarity: np.ndarray, families: Sequence[str]) -> dict[str, Any] | None:
    """Mean similarity over pairs of distinct tasks of one family vs pairs of different families,
    their difference, the per-family within mean (``per_family``) and the per-family breakdown
    (``by_family``: within, across = mean over the pairs of one of its tasks and a task of another
    family, difference); None unless both kinds of pair exist."""
    within, across, per_family = [], [], {}
    n = len(families)
    for s in range(n):
        for t in range(s + 1, n):
            (within if families[s] == families[t] else across).append(float(similarity[s, t]))
            if families[s] == families[t]:
                per_family.setdefault(families[s], []).append(float(similarity[s, t]))
    if not within or not across:
        return None
    w, a = float(np.mean(within)), float(np.mean(across))
    by_family = {}
    for f in sorted(set(families)):
        mine = [i for i in range(n) if families[i] == f]
        others = [j for j in range(n) if families[j] != f]
        inside = [float(similarity[s, t]) for k, s in enumerate(mine) for t in mine[k + 1:]]
        outside = [float(similarity[s, t]) for s in mine for t in others]
        fw = float(np.mean(inside)) if inside else None
        fa = float(np.mean(outside)) if outside else None
        by_family[f] = {"tasks": len(mine), "within": fw, "across": fa,
                        "difference": fw - fa if fw is not None and fa is not None else None}
    return {"within": w, "across": a, "difference": w - a, "pairs": {"within": len(within), "across": len(across)},
            "per_family": {f: float(np.mean(v)) for f, v in sorted(per_family.items())}, "by_family": by_family}


def similarity_summary(task_names: Sequence[str], binary: np.ndarray, soft: np.ndarray,
                       families: Sequence[str] | None = None) -> dict[str, Any]:
    """Both similarity matrices, the all-zero tasks, and the family separation where families
    (default: from the task names, :func:`family_of`) group some tasks."""
    families = list(families) if families is not None else [family_of(t) for t in task_names]
    s_bin, zero = cosine_similarity(binary)
    s_soft, _ = cosine_similarity(soft)
    return {"tasks": list(task_names), "families": families, "binary": s_bin.tolist(), "soft": s_soft.tolist(),
            "all_zero": [task_names[i] for i in zero],
            "separation": {"binary": family_separation(s_bin, families), "soft": family_separation(s_soft, families)}}
