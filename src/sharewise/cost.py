"""Parameter counts and FLOPs per task (evaluation protocol, points 6 and 7).

Parameters: ``nn.Parameter`` elements, buffers excluded, tied tensors counted once. FLOPs:
``torch.utils.flop_counter.FlopCounterMode`` (2 × multiply-accumulates) for one input example
in eval mode: per task (that task's output alone), all tasks with the model's own execution, and
the naive cost (T separate passes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _unique(params) -> dict[int, nn.Parameter]:
    return {id(p): p for p in params}


def count(params) -> int:
    return sum(p.numel() for p in _unique(params).values())


def parameter_counts(model: Any) -> dict[str, Any]:
    """Total, per group, shared (on ≥ 2 task paths), per-task path and unique-used counts."""
    all_params = _unique(model.parameters())
    groups = {name: count(ps) for name, ps in model.param_groups().items()}
    users: dict[int, int] = {}
    per_task = {}
    for t in model.task_names:
        path = _unique(p for m in model.task_modules(t) for p in m.parameters())
        per_task[t] = count(path.values())
        for pid in path:
            users[pid] = users.get(pid, 0) + 1
    shared = sum(all_params[pid].numel() for pid, n in users.items() if n > 1)
    used = sum(all_params[pid].numel() for pid in users)
    return {"total": count(all_params.values()), "by_group": groups, "shared": shared, "per_task": per_task,
            "unique_used": used}


def count_flops(fn, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


@torch.no_grad()
def flop_counts(model: Any, example: torch.Tensor, forward_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """FLOPs for one example (``example`` has no batch dimension)."""
    kw = forward_kwargs or {}
    was_training = model.training
    model.eval()
    x = example.unsqueeze(0)
    per_task = {t: count_flops(model, x, tasks=[t], **kw) for t in model.task_names}
    all_tasks = count_flops(model, x, **kw)
    model.train(was_training)
    return {"per_task": per_task, "all_tasks": all_tasks, "naive": sum(per_task.values())}
