"""Evaluation over a whole split: gathered predictions, masked losses, every task's metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..tasks import Task
from . import distributed as D


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def forward_batch(model: torch.nn.Module, batch: Any, task_names: Sequence[str], kwargs: dict[str, Any]):
    """``{task: (output, target, mask)}`` for either batch shape (one call for shared input).

    Per-task batches: one call per task, or one call for the whole batch when the model has the
    optional hook ``forward_all_tasks({task: inputs}, **kwargs) -> {task: output}``
    (:class:`~sharewise.methods.base.MultiTaskModel`; layers that mix tasks run all tasks together)."""
    if isinstance(batch, dict):
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        whole = getattr(inner, "forward_all_tasks", None)
        if whole is not None:
            outputs = whole({t: x for t, (x, _, _) in batch.items()}, **kwargs)
            return {t: (outputs[t], y, m) for t, (_, y, m) in batch.items()}
        out = {}
        for t, (x, y, m) in batch.items():
            out[t] = (model(x, tasks=[t], **kwargs)[t], y, m)
        return out
    x, targets = batch
    outputs = model(x, tasks=list(task_names), **kwargs)
    return {t: (outputs[t], *targets[t]) for t in task_names if t in targets}


@torch.no_grad()
def predict_split(model: torch.nn.Module, data: Any, split: str, tasks: Sequence[Task], *, batch_size: int,
                  device: torch.device, forward_kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Scores, targets and masks of every example of ``split``, gathered from all ranks."""
    was_training = model.training
    model.eval()
    names = [t.name for t in tasks]
    by_name = {t.name: t for t in tasks}
    parts: dict[str, dict[str, list]] = {t: {"scores": [], "targets": [], "masks": [], "loss": []} for t in names}
    for batch in data.batches(split, batch_size, shuffle=False, rank=D.rank(), world_size=D.world_size()):
        batch = to_device(batch, device)
        for t, (out, y, m) in forward_batch(model, batch, names, forward_kwargs or {}).items():
            task = by_name[t]
            n = m.sum().clamp_min(1)
            parts[t]["loss"].append(float(task.compute_loss(out.float(), y, m) * n) if m.any() else 0.0)
            parts[t]["scores"].append(task.predict(out))
            parts[t]["targets"].append(y.cpu().numpy())
            parts[t]["masks"].append(m.cpu().numpy())
    model.train(was_training)
    gathered = D.gather_objects(parts)
    result: dict[str, dict[str, np.ndarray]] = {}
    for t in names:
        def cat(key: str) -> np.ndarray:
            arrays = [a for g in gathered for a in g[t][key]]
            return np.concatenate(arrays) if arrays else np.zeros(0)
        result[t] = {"scores": cat("scores"), "targets": cat("targets"), "masks": cat("masks").astype(bool),
                     "loss_sum": float(sum(sum(g[t]["loss"]) for g in gathered))}
    return result


def evaluate(model: torch.nn.Module, data: Any, split: str, tasks: Sequence[Task], *, batch_size: int,
             device: torch.device, forward_kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Per task: masked mean loss (standardised units) and every metric, over the whole split."""
    preds = predict_split(model, data, split, tasks, batch_size=batch_size, device=device, forward_kwargs=forward_kwargs)
    out = {}
    for task in tasks:
        p = preds[task.name]
        if len(p["masks"]) == 0:
            out[task.name] = {"loss": float("nan"), "n": 0}
            continue
        metrics = task.evaluate(p["scores"], p["targets"], p["masks"])
        metrics["loss"] = p["loss_sum"] / max(1, int(p["masks"].sum()))
        out[task.name] = metrics
    return out
