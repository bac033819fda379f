"""BatchNorm that can normalise a task-stacked batch group by group.

Batched execution (AdaShare's search with the task dimension folded into the batch) runs a
block once on ``(T·B, ...)`` activations; normalisation must still behave as T separate passes.
Inside :func:`task_groups` every :class:`TaskBatchNorm` in training mode normalises each of the
T chunks with its own batch statistics and updates its running statistics chunk by chunk in task
order, exactly as T separate calls would. Inside :func:`repeated_passes` a layer computed once
for T identical inputs (a prefix that every task executes) updates its running statistics T
times, as T separate passes would. The mode lives in a context variable, so no module is mutated
during ``forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

_MODE: ContextVar[tuple[str, int] | None] = ContextVar("sharewise_task_norm_mode", default=None)


@contextlib.contextmanager
def task_groups(num_tasks: int) -> Iterator[None]:
    """Batches are ``num_tasks`` equal chunks (task-major): per-chunk batch statistics."""
    token = _MODE.set(("groups", num_tasks))
    try:
        yield
    finally:
        _MODE.reset(token)


@contextlib.contextmanager
def repeated_passes(num_tasks: int) -> Iterator[None]:
    """One batch standing for ``num_tasks`` identical passes: running statistics updated that often."""
    token = _MODE.set(("repeat", num_tasks))
    try:
        yield
    finally:
        _MODE.reset(token)


class _TaskAware:
    """Task groups: each chunk goes through the native BatchNorm in task order (its own batch
    statistics, running statistics updated chunk after chunk, as T separate passes do). Repeated
    passes over one input: one native call with momentum ``1 − (1 − m)^T``, which is the closed
    form of T identical updates, ``r_T = (1−m)^T r_0 + (1 − (1−m)^T) μ`` (§10.1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        plain = super().forward
        mode = _MODE.get()
        if mode is None or not self.training or mode[1] <= 1:
            return plain(x)
        kind, n = mode
        if kind == "groups":
            if x.shape[0] % n:
                raise ValueError(f"task-grouped batch of {x.shape[0]} rows does not split into {n} tasks")
            return torch.cat([plain(chunk) for chunk in x.chunk(n, dim=0)], dim=0)
        if self.momentum is None or not self.track_running_stats:  # cumulative averages: no closed form
            for _ in range(n - 1):
                plain(x)
            return plain(x)
        self._check_input_dim(x)
        momentum = 1.0 - (1.0 - self.momentum) ** n
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps)
        self.num_batches_tracked.add_(n)
        return out


class TaskBatchNorm1d(_TaskAware, nn.BatchNorm1d):
    pass


class TaskBatchNorm2d(_TaskAware, nn.BatchNorm2d):
    pass


class TaskBatchNorm3d(_TaskAware, nn.BatchNorm3d):
    pass


def supports_task_groups(module: nn.Module) -> bool:
    """True when every BatchNorm inside ``module`` is task-aware (others normalise per example)."""
    return all(isinstance(m, _TaskAware) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
