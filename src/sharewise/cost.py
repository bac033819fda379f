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


def _path_pieces(modules, task_index: int) -> dict[tuple[int, int | None], int]:
    """The parameter elements on one task's path, keyed by (tensor, row): a module with
    ``per_task_rows`` (one row of each parameter per task, e.g. ``PerTaskBatchNorm``) contributes
    only the task's own row; any other module its whole tensors."""
    pieces: dict[tuple[int, int | None], int] = {}
    for top in modules:
        for m in top.modules():
            rows = getattr(m, "per_task_rows", False)
            for p in m.parameters(recurse=False):
                if rows:
                    pieces[(id(p), task_index)] = p.numel() // p.shape[0]
                else:
                    pieces[(id(p), None)] = p.numel()
    return pieces


def parameter_counts(model: Any) -> dict[str, Any]:
    """Total, per group, shared (on ≥ 2 task paths), per-task path and unique-used counts.

    A task's path is the parameters of ``model.task_modules(task)``; of a layer with a row per
    task (``per_task_rows``) only that task's row is on its path."""
    all_params = _unique(model.parameters())
    groups = {name: count(ps) for name, ps in model.param_groups().items()}
    users: dict[tuple[int, int | None], int] = {}
    sizes: dict[tuple[int, int | None], int] = {}
    per_task = {}
    for index, t in enumerate(model.task_names):
        path = _path_pieces(model.task_modules(t), index)
        per_task[t] = sum(path.values())
        sizes.update(path)
        for key in path:
            users[key] = users.get(key, 0) + 1
    shared = sum(sizes[key] for key, n in users.items() if n > 1)
    used = sum(sizes.values())
    return {"total": count(all_params.values()), "by_group": groups, "shared": shared, "per_task": per_task,
            "unique_used": used}


def count_flops(fn, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_operations(fn, *args: Any, **kwargs: Any) -> int:
    """How many PyTorch operations one call of ``fn`` dispatches, forward and (on the CPU, where
    it runs on the calling thread) backward, views and in-place updates included. On a small
    network on a CPU each costs a few microseconds whatever its FLOPs, so the ratio of two
    variants' counts is what their times follow where the FLOP ratio does not
    (``benchmarks/adashare_speed.py``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            self.calls += 1
            return func(*args, **(kwargs or {}))

    counter = _Count()
    with counter:
        fn(*args, **kwargs)
    return counter.calls


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
