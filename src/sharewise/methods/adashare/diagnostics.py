"""What AdaShare's search learned, and which loss term decided it (issue 23).

Three diagnostics, computed from ``policy.json`` (so ``results.json`` and ``report.md`` agree with it):

- **p_exec over the search**: per task and gated block, ``p_exec`` after every search cycle
  (``policy.json``'s ``history``).
- **Pairwise task distances** of the selected policy: ``mean_l |p_exec(l,s) − p_exec(l,t)|`` and the
  Hamming distance of the argmax paths, ``Σ_l 1[u(l,s) ≠ u(l,t)]`` with ``u = 1[p_exec ≥ 0.5]``.
- **Gradient sizes on the policy logits**, logged during the search: in every policy step the
  gradient of the step's objective on Φ is split into its terms, ``∇Σ_t λ_t L_t + ∇λ_sp L_sparsity +
  ∇λ_sh L_sharing`` (the regularisers depend on Φ alone, so their gradients are exact and cheap; the
  task part is the rest). Task t's loss reaches only row t of Φ (its own policy), so the task
  part's row t is task t's gradient. The L2 norms, averaged over a cycle's policy steps, are kept
  per cycle: a term whose norm is far below the others did not decide the policy.

A known-answer score for grouped tasks (:func:`group_separation`): between-group minus
within-group mean distance; positive when the search gave tasks of one group more similar policies.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .policy import argmax_decisions

GRAD_TERMS = ("task", "sparsity", "sharing")


def policy_distances(exec_prob: Mapping[str, Sequence[float]], tasks: Sequence[str]) -> dict[str, Any]:
    """``{"mean_abs": {s: {t: d}}, "hamming_argmax": {s: {t: k}}}`` for every pair of tasks (both
    orders, 0 on the diagonal): ``d = mean_l |p_s(l) − p_t(l)|``, ``k`` = blocks whose argmax decisions
    (``p ≥ 0.5`` executes) differ."""
    probs = torch.tensor([list(exec_prob[t]) for t in tasks], dtype=torch.float64)  # (T, L)
    mean_abs = (probs[:, None, :] - probs[None, :, :]).abs().mean(-1)
    u = argmax_decisions(probs)
    hamming = (u[:, None, :] != u[None, :, :]).sum(-1)
    return {"mean_abs": {s: {t: float(mean_abs[i, j]) for j, t in enumerate(tasks)} for i, s in enumerate(tasks)},
            "hamming_argmax": {s: {t: int(hamming[i, j]) for j, t in enumerate(tasks)} for i, s in enumerate(tasks)}}


def group_separation(distances: Mapping[str, Mapping[str, float]], groups: Mapping[str, str]) -> dict[str, float | None]:
    """Mean distance over task pairs of the same group (``within``) and of different groups
    (``between``), and ``separation = between − within`` (> 0: the groups were told apart).
    ``groups`` maps task -> group name; tasks not in it are ignored."""
    tasks = [t for t in groups if t in distances]
    within, between = [], []
    for s, t in itertools.combinations(tasks, 2):
        (within if groups[s] == groups[t] else between).append(float(distances[s][t]))
    w = sum(within) / len(within) if within else None
    b = sum(between) / len(between) if between else None
    return {"within": w, "between": b, "separation": (b - w) if w is not None and b is not None else None}


def split_gradient(total: torch.Tensor, aux_grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy-logit gradient of one step by term: ``{"task": total − Σ aux, "sparsity": …,
    "sharing": …}`` (a term absent from ``aux_grads``, e.g. λ = 0, is a zero gradient)."""
    parts = {name: aux_grads.get(name, torch.zeros_like(total)) for name in GRAD_TERMS[1:]}
    task = total - sum(parts.values())
    return {"task": task, **parts}


def gradient_norms(parts: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> dict[str, float]:
    """L2 norm of each term's gradient on Φ (T, L, 2), and of each task's row of the task part
    (``task/<name>``)."""
    out = {name: float(torch.linalg.vector_norm(g)) for name, g in parts.items()}
    task = parts["task"]
    for i, t in enumerate(tasks):
        out[f"task/{t}"] = float(torch.linalg.vector_norm(task[i]))
    return out


def accumulate(acc: dict[str, float], norms: Mapping[str, float]) -> None:
    """Add one step's norms to a running sum (``acc["steps"]`` counts the steps)."""
    acc["steps"] = acc.get("steps", 0) + 1
    for k, v in norms.items():
        acc[k] = acc.get(k, 0.0) + v


def cycle_means(acc: Mapping[str, float]) -> dict[str, float] | None:
    """The mean of each norm over the steps summed in ``acc``; None when it holds no step."""
    n = acc.get("steps", 0)
    if not n:
        return None
    return {k: v / n for k, v in acc.items() if k != "steps"}


def gradient_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean over the search's cycles of each term's mean gradient norm, its share of the summed
    norms (task + sparsity + sharing), and the term with the largest mean (``dominant``)."""
    rows = [h["grad_norm"] for h in history if h.get("grad_norm")]
    if not rows:
        return None
    keys = list(rows[0])
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
    total = sum(mean.get(k, 0.0) for k in GRAD_TERMS)
    share = {k: (mean.get(k, 0.0) / total if total > 0 else None) for k in GRAD_TERMS}
    return {"cycles": len(rows), "mean": mean, "share": share,
            "dominant": max(GRAD_TERMS, key=lambda k: mean.get(k, 0.0)),
            "last": dict(rows[-1])}


def diagnostics(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The ``adashare`` entry of ``results.json`` from a ``policy.json`` (see the module's docstring)."""
    tasks = list(policy["tasks"])
    history = list(policy.get("history") or [])
    return {
        "blocks": list(policy["blocks"]),
        "policy_checkpoint": policy.get("checkpoint"),
        "cycle": policy.get("cycle"),
        "exec_prob": {t: list(policy["exec_prob"][t]) for t in tasks},
        "exec_prob_history": [{"cycle": h["cycle"], "exec_prob": h["exec_prob"]} for h in history],
        "task_distance": policy_distances(policy["exec_prob"], tasks),
        "grad_norm_history": [{"cycle": h["cycle"], **h["grad_norm"]} for h in history if h.get("grad_norm")],
        "grad_norm_summary": gradient_summary(history),
    }
