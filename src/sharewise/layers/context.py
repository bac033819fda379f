"""The task context: which task, or which tasks, a call of a shared module is for.

A multi-task layer (task-aware normalisation, per-task parameters) behaves differently when it
runs for one task, for T tasks stacked into one batch, or for T identical passes computed once.
The caller says which with a context manager, never with an argument threaded through every
module or an attribute mutated in ``forward`` (DESIGN: no module state is changed in ``forward``):

- :func:`single_task` — a pass for one task (its index in the model's task list);
- :func:`task_groups` — a task-interleaved batch, row ``b · T + t`` is example b of task t;
- :func:`repeated_passes` — one batch standing for T identical passes (a prefix every task computes).

A layer reads the context with :func:`current` (None outside every context: plain behaviour).
Layer kinds that prepare work for a whole :func:`task_groups` call (the task-aware BatchNorms
stack their γ, β once per width) register :func:`register_group_hooks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class TaskContext:
    """``kind``: ``"groups"``, ``"repeat"`` or ``"task"``; ``tasks``: how many tasks the call is for.

    ``ids``: the tasks' indices in the model's task list, in row order (None: 0..tasks−1).
    ``prepared``: per announced layer, what a group hook prepared for it; ``pending``: updates
    the layers defer to the end of the context (the running statistics of task-aware BatchNorm).
    """

    kind: str
    tasks: int
    ids: tuple[int, ...] | None = None
    pending: list[Any] = field(default_factory=list)
    prepared: dict[nn.Module, Any] = field(default_factory=dict)

    @property
    def task_ids(self) -> tuple[int, ...]:
        return self.ids if self.ids is not None else tuple(range(self.tasks))


_CONTEXT: ContextVar[TaskContext | None] = ContextVar("sharewise_task_context", default=None)

# (prepare(context, announced layers), finish(context)) per layer kind
_GROUP_HOOKS: list[tuple[Callable[[TaskContext, Sequence[nn.Module]], None], Callable[[TaskContext], None]]] = []


def current() -> TaskContext | None:
    """The innermost task context, or None."""
    return _CONTEXT.get()


def register_group_hooks(prepare: Callable[[TaskContext, Sequence[nn.Module]], None],
                         finish: Callable[[TaskContext], None]) -> None:
    """``prepare`` runs when a :func:`task_groups` context of more than one task opens (with the
    layers announced to it), ``finish`` when it closes, after the context is reset."""
    if (prepare, finish) not in _GROUP_HOOKS:
        _GROUP_HOOKS.append((prepare, finish))


@contextlib.contextmanager
def _entered(context: TaskContext) -> Iterator[TaskContext]:
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


@contextlib.contextmanager
def task_groups(num_tasks: int, ids: Sequence[int] | None = None,
                layers: Sequence[nn.Module] = ()) -> Iterator[None]:
    """Batches are task-interleaved, row ``b · num_tasks + t`` for example b of task t.

    ``ids``: the tasks' indices (default 0..num_tasks−1). ``layers``: the layers the context will
    call (optional), announced so that their kind can prepare for all of them at once (task-aware
    BatchNorm: γ, β repeated and statistics buffers made once per width, not once per layer).
    Deferred updates (running statistics) are applied when the context ends."""
    context = TaskContext("groups", num_tasks, None if ids is None else tuple(ids))
    if num_tasks > 1:
        for prepare, _ in _GROUP_HOOKS:
            prepare(context, layers)
    with _entered(context):
        yield
    for _, finish in _GROUP_HOOKS:
        finish(context)


@contextlib.contextmanager
def repeated_passes(num_tasks: int) -> Iterator[None]:
    """One batch standing for ``num_tasks`` identical passes (running statistics updated that often)."""
    with _entered(TaskContext("repeat", num_tasks)):
        yield


@contextlib.contextmanager
def single_task(index: int) -> Iterator[None]:
    """A pass for one task (its index in the model's task list): per-task layers use that task's
    parameters and statistics; shared layers behave as usual."""
    with _entered(TaskContext("task", 1, (index,))):
        yield
