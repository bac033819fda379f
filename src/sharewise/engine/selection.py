"""Model selection on validation: the score of one evaluation, and how finished candidates compare.

``train.selection_metric`` names the rule (``config.SELECTION_RULES``) or a metric:

- ``loss_ratio`` (default): ``−Σ_t λ_t (L_t / L_t⁰) / Σ_t λ_t``, each task's validation loss
  relative to its loss at the phase's first evaluation ``L_t⁰``. Scale-free: multiplying one task's
  loss by any constant (a numerical target in other units, a task with more classes) leaves the
  choice unchanged, which the summed loss does not. It is −1 at the first evaluation.
- ``objective``: ``−Σ_t λ_t L_t``, the summed validation loss (the rule of earlier releases; the
  recorded benchmark sections keep it).
- ``pooled_accuracy``: the accuracy over every validation example of every task,
  ``Σ_t n_t acc_t / Σ_t n_t`` (categorical tasks; TAAN's Omniglot-50 number, TAAN spec §6);
- a metric name (``accuracy``, ``gap_at_20``, ...): its mean over the tasks that have it, negated
  where lower is better.

A reference (``--reference``: single-task results) always selects on validation Δ_MTL. Between
finished candidates (AdaShare's re-trained architectures) ``loss_ratio`` measures every candidate
from one base, the mean of their phases' first validation losses.

The evidence behind the default is in docs/benchmarks.md ("Model selection rules"): on small
validation sets the metric-based alternatives (a skill or Δ_MTL against the first evaluation, mean
per-task ranks) followed a lucky early accuracy and chose chance-level models; the loss ratio did not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import SELECTION_RULES
from ..errors import ConfigError
from ..metrics import delta_mtl, delta_task, higher_is_better
from ..tasks import Task, validation_objective

_TINY = 1e-12  # the smallest first-evaluation loss a ratio divides by

Evaluation = Mapping[str, Mapping[str, float]]  # task -> metric -> value (``loss`` included)


def rule_description(rule: str, reference: bool = False) -> str:
    """One line for ``selection.json``, ``results.json`` and ``report.md``."""
    if reference:
        return "validation Δ_MTL against the reference"
    if rule == "loss_ratio":
        return ("validation loss ratio −Σ_t λ_t (L_t / L_t⁰) / Σ_t λ_t, L⁰ the phase's first evaluation "
                "(between candidates: the mean of theirs)")
    if rule == "objective":
        return "validation objective −Σ_t λ_t L_t"
    if rule == "pooled_accuracy":
        return "validation accuracy pooled over every example of every task, Σ_t n_t acc_t / Σ_t n_t"
    return f"validation {rule}, mean over tasks"


def pooled_accuracy(evaluation: Evaluation, tasks: Sequence[Task]) -> float | None:
    """``Σ_t n_t acc_t / Σ_t n_t`` over the tasks with an accuracy and examples (``n``): the
    fraction of all examples classified correctly; None when no task has one."""
    pairs = [(evaluation[t.name]["accuracy"], evaluation[t.name]["n"]) for t in tasks
             if t.name in evaluation and evaluation[t.name].get("accuracy") is not None
             and (evaluation[t.name].get("n") or 0) > 0]
    total = sum(n for _, n in pairs)
    if not pairs or total <= 0:
        return None
    return sum(acc * n for acc, n in pairs) / total


def loss_ratio(val: Evaluation, base: Evaluation, tasks: Sequence[Task]) -> float:
    """``−Σ_t λ_t (L_t / L_t⁰) / Σ_t λ_t`` over the tasks whose two losses are finite (a task
    without validation examples has none); −inf when no task has, so it is never preferred."""
    terms = [(val[t.name]["loss"] / max(base[t.name]["loss"], _TINY), t.weight) for t in tasks
             if math.isfinite(val[t.name].get("loss", math.nan)) and math.isfinite(base[t.name].get("loss", math.nan))]
    total = sum(w for _, w in terms)
    if not terms or total <= 0:
        return -math.inf
    return -sum(r * w for r, w in terms) / total


def selection_score(val: Evaluation, tasks: Sequence[Task], reference: Mapping[str, Any] | None = None,
                    rule: str = "objective", base: Evaluation | None = None) -> float:
    """The score of one validation evaluation, higher is better. ``base`` is the evaluation
    ``loss_ratio`` divides by (``val`` itself when None, which scores −1)."""
    if reference:
        deltas = {t.name: delta_task(val[t.name], reference_metrics(reference[t.name], "val"), t.kind,
                                     [t.primary_metric]) for t in tasks if t.name in reference}
        d = delta_mtl(deltas)
        if d is not None:
            return d
    if rule == "loss_ratio":
        return loss_ratio(val, base or val, tasks)
    if rule == "objective":
        return validation_objective({t.name: val[t.name]["loss"] for t in tasks}, tasks)
    if rule == "pooled_accuracy":
        pooled = pooled_accuracy(val, tasks)
        if pooled is None:
            raise ConfigError("train.selection_metric: pooled_accuracy needs categorical tasks with validation "
                              "examples (accuracy)")
        return pooled
    values = [(val[t.name][rule], rule != "loss" and higher_is_better(t.kind, rule)) for t in tasks if rule in val[t.name]]
    if not values:
        raise ConfigError(f"train.selection_metric: no task has a validation metric {rule!r} "
                          f"(e.g. {', '.join(sorted(k for k in val[tasks[0].name] if k != 'n'))})")
    return sum(v if up else -v for v, up in values) / len(values)


def candidate_base(candidates: Sequence[Any], phases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The one base from which ``loss_ratio`` measures every finished candidate: per task, the mean
    over candidates of their phase's first validation loss (``first_val_loss`` of the phase summary
    whose checkpoint the candidate is), so that one candidate scores what its phase scored it;
    the candidates' own mean validation losses where a summary lacks it (runs of earlier releases)."""
    firsts = []
    for cand in candidates:
        phase = Path(cand.checkpoint).parent.name
        summary = next((s for s in phases if s.get("phase") == phase and s.get("directory", ".") == cand.directory), None)
        firsts.append((summary or {}).get("first_val_loss") or None)
    if any(f is None for f in firsts):
        firsts = [{t: ms.get("loss") for t, ms in c.val.items()} for c in candidates]
    out: dict[str, dict[str, float]] = {}
    for task in firsts[0]:
        xs = [float(f[task]) for f in firsts if _finite(f.get(task))]
        out[task] = {"loss": sum(xs) / len(xs) if xs else math.nan}
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def reference_metrics(entry: Mapping[str, Any], split: str) -> Mapping[str, float]:
    """A reference task entry is ``{"val": {...}, "test": {...}}`` (a run's results) or flat metrics."""
    if split in entry and isinstance(entry[split], dict):
        return entry[split]
    return entry


__all__ = ["SELECTION_RULES", "candidate_base", "loss_ratio", "pooled_accuracy", "reference_metrics", "rule_description",
           "selection_score"]
