"""Tasks: what is predicted, how it is scored, and how its loss handles missing targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as _metrics

TaskKind = Literal["categorical", "numerical", "multilabel"]


@dataclass
class Task:
    """One prediction target.

    ``classes`` are the original labels of a categorical task (index i = output i) or the label
    names of a multilabel task. A numerical task is trained on ``(y − mean) / std`` (training
    statistics) and its metrics are reported in original units.
    """

    name: str
    kind: TaskKind
    classes: list[Any] = field(default_factory=list)
    loss: Literal["ce", "mse", "l1", "bce"] | None = None
    weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    primary_metric: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "numerical", "multilabel"):
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}")
        default_loss = {"categorical": "ce", "numerical": "mse", "multilabel": "bce"}[self.kind]
        self.loss = self.loss or default_loss
        allowed = {"categorical": ("ce",), "numerical": ("mse", "l1"), "multilabel": ("bce",)}[self.kind]
        if self.loss not in allowed:
            raise ValueError(f"task {self.name!r}: loss {self.loss!r} does not fit a {self.kind} task {allowed}")
        self.primary_metric = self.primary_metric or _metrics.PRIMARY_METRIC[self.kind]

    @property
    def out_features(self) -> int:
        """Width of the task's head output (logits for categorical/multilabel)."""
        return 1 if self.kind == "numerical" else len(self.classes)

    @property
    def metrics(self) -> tuple[_metrics.Metric, ...]:
        return _metrics.METRICS_BY_KIND[self.kind]

    def compute_loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean loss ``L_t = Σ_i m_i ℓ_i / max(1, Σ_i m_i)``.

        ``output``: (B, out_features); ``target``: (B,) class index, (B,) standardised value or
        (B, C) multi-hot; ``mask``: (B,) bool. Rows with ``mask = 0`` contribute exactly nothing
        (their targets may hold any value), and a batch without a known target gives 0
        with the head still in the autograd graph.
        """
        return _masked_loss(self.kind, self.loss, output, target, mask)

    def predict(self, output: torch.Tensor) -> np.ndarray:
        """Scores for metrics: class probabilities, values in original units, or label probabilities."""
        out = output.detach().float().cpu()
        if self.kind == "categorical":
            return torch.softmax(out, dim=1).numpy()
        if self.kind == "numerical":
            return out.reshape(-1).numpy() * self.std + self.mean
        return torch.sigmoid(out).numpy()

    def target_original(self, target: np.ndarray) -> np.ndarray:
        """Targets as metrics see them (original units for numerical tasks)."""
        if self.kind == "numerical":
            return np.asarray(target, dtype=float) * self.std + self.mean
        if self.kind == "categorical":
            return np.asarray(target, dtype=int)
        return np.asarray(target)

    def evaluate(self, scores: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        """All metrics of the task over the present rows (``scores`` from :meth:`predict`)."""
        keep = np.asarray(mask, dtype=bool)
        y = self.target_original(np.asarray(target)[keep])
        s = np.asarray(scores)[keep]
        out = {m.name: m.fn(y, s) for m in self.metrics}
        out["n"] = int(keep.sum())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "classes": [_jsonable(c) for c in self.classes],
            "loss": self.loss, "weight": self.weight, "mean": self.mean, "std": self.std,
            "primary_metric": self.primary_metric,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def validation_objective(losses: dict[str, float], tasks: Sequence[Task]) -> float:
    """Selection score without references: ``−Σ_t λ_t L_t^val`` (protocol point 2)."""
    return -sum(t.weight * losses[t.name] for t in tasks)


def _masked_loss(kind: str, loss: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:meth:`Task.compute_loss` over any leading dimensions: ``output`` (..., B, out), ``target``
    (..., B) or (..., B, C), ``mask`` (..., B) -> losses (...)."""
    m = mask.to(output.dtype)
    if kind == "categorical":
        safe = torch.where(mask, target.long(), 0)
        per_row = F.cross_entropy(output.reshape(-1, output.shape[-1]), safe.reshape(-1), reduction="none")
        per_row = per_row.view(mask.shape)
    elif kind == "numerical":
        pred = output.reshape(mask.shape)
        safe = torch.where(mask, target.to(output.dtype), pred.detach())
        diff = pred - safe
        per_row = diff.abs() if loss == "l1" else diff.pow(2)
    else:
        safe = torch.where(mask.unsqueeze(-1), target.to(output.dtype), 0.0)
        per_row = F.binary_cross_entropy_with_logits(output, safe, reduction="none").mean(-1)
    return (per_row * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def compute_losses(tasks: Sequence[Task], outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                   ) -> torch.Tensor:
    """Every task's :meth:`Task.compute_loss` as one (len(outputs),) tensor, in the order of ``outputs``
    (``{task: (output, target, mask)}``).

    Tasks of the same kind and loss whose tensors have the same shapes are computed together, in
    one call per operation: with many small heads the T separate losses (about ten operations
    each, forward and backward) are a fixed cost of every step that no sharing removes.
    """
    by_name = {t.name: t for t in tasks}
    groups: dict[tuple, list[int]] = {}
    items = list(outputs.items())
    if not items:
        return torch.zeros(0)
    for i, (name, (out, y, m)) in enumerate(items):
        task = by_name[name]
        key = (task.kind, task.loss, out.shape, y.shape, m.shape, out.dtype, y.dtype, out.device)
        groups.setdefault(key, []).append(i)
    parts, order = [], []
    for (kind, loss, *_), index in groups.items():
        stacked = [torch.stack([items[i][1][k] for i in index]) for k in range(3)]
        parts.append(_masked_loss(kind, loss, *stacked))
        order.extend(index)
    losses = torch.cat(parts) if len(parts) > 1 else parts[0]
    if order != sorted(order):
        losses = losses[torch.tensor(order, device=losses.device).argsort()]
    return losses
