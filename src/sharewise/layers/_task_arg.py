"""How a soft-sharing layer's call names its task: the ``task`` argument, else the task context.

``task`` is an int index, a task name (the layer's ``task_names``), a list / LongTensor of
indices or names (a subset, in that order), or None. With None, a :func:`~.context.single_task`
context supplies the index; outside one, the call is for all tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import context as _context


def resolve_task(task, num_tasks: int, task_names: Sequence[str] | None) -> tuple[int | None, list[int]]:
    """``(single index or None, the task indices the call is for)``."""
    if task is None:
        ctx = _context.current()
        if ctx is not None and ctx.kind == "task" and ctx.ids:
            task = ctx.ids[0]
        else:
            return None, list(range(num_tasks))
    if isinstance(task, torch.Tensor):
        if task.ndim == 0:
            task = int(task)
        else:
            return None, [_one(int(t), num_tasks, task_names) for t in task.tolist()]
    if isinstance(task, (list, tuple)):
        return None, [_one(t, num_tasks, task_names) for t in task]
    index = _one(task, num_tasks, task_names)
    return index, [index]


def _one(task, num_tasks: int, task_names: Sequence[str] | None) -> int:
    if isinstance(task, str):
        if not task_names or task not in task_names:
            raise KeyError(f"unknown task {task!r} (tasks: {list(task_names or [])})")
        return list(task_names).index(task)
    index = int(task)
    if not 0 <= index < num_tasks:
        raise IndexError(f"task index {index} out of range for {num_tasks} tasks")
    return index


def check_task_names(num_tasks: int, task_names: Sequence[str] | None) -> list[str] | None:
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1 (got {num_tasks})")
    if task_names is None:
        return None
    names = list(task_names)
    if len(names) != num_tasks or len(set(names)) != num_tasks:
        raise ValueError(f"task_names must be {num_tasks} distinct names (got {names})")
    return names
