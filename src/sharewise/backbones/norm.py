"""BatchNorm that can normalise a task-stacked batch group by group.

Batched execution (AdaShare's search with the task dimension folded into the batch) runs a
block once on ``(B·T, ...)`` activations; normalisation must still behave as T separate passes.
Inside :func:`task_groups` the batch is task-interleaved (row ``b·T + t`` is example b of task
t) and every :class:`TaskBatchNorm` in training mode normalises each task's rows with their own
batch statistics; the running statistics end as T calls in task order would leave them (§10.1).
Inside :func:`repeated_passes` a layer computed once for T identical inputs (a prefix that every
task executes) updates its running statistics T times, as T separate passes would. The mode
lives in a context variable, so no module is mutated during ``forward`` apart from its running
statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _Mode:
    kind: str  # "groups" or "repeat"
    tasks: int
    # (layer, (2, T, C) batch means and unbiased variances) for the running statistics, applied
    # together when the task_groups context ends
    pending: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)


_MODE: ContextVar[_Mode | None] = ContextVar("sharewise_task_norm_mode", default=None)


@contextlib.contextmanager
def task_groups(num_tasks: int) -> Iterator[None]:
    """Batches are task-interleaved, row ``b · num_tasks + t`` for example b of task t: per-task
    batch statistics. The running statistics of every layer called inside are updated when the
    context ends (they are not read in training mode), a few operations for all layers together."""
    mode = _Mode("groups", num_tasks)
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)
    _update_running(mode.pending, num_tasks)


@contextlib.contextmanager
def repeated_passes(num_tasks: int) -> Iterator[None]:
    """One batch standing for ``num_tasks`` identical passes: running statistics updated that often."""
    token = _MODE.set(_Mode("repeat", num_tasks))
    try:
        yield
    finally:
        _MODE.reset(token)


class _TaskAware:
    """Task groups: the interleaved ``(B·T, C, ...)`` batch is viewed, without a copy, as
    ``(B, T·C, ...)``, so one native call normalises every (task, channel) pair with its own batch
    statistics (γ, β repeated for every task); the running
    statistics take the closed form of T updates in task order,
    ``r_T = (1−m)^T r_0 + m Σ_k (1−m)^(T−k) μ_k``. Repeated passes over one input: one native call
    with momentum ``1 − (1 − m)^T``, the same closed form with μ_k = μ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        plain = super().forward
        mode = _MODE.get()
        if mode is None or not self.training or mode.tasks <= 1:
            return plain(x)
        self._check_input_dim(x)
        if mode.kind == "groups":
            return self._grouped(x, mode)
        n = mode.tasks
        if self.momentum is None or not self.track_running_stats:  # cumulative averages: no closed form
            for _ in range(n - 1):
                plain(x)
            return plain(x)
        momentum = 1.0 - (1.0 - self.momentum) ** n
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps)
        self.num_batches_tracked.add_(n)
        return out

    def _grouped(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        n = mode.tasks
        if x.shape[0] % n:
            raise ValueError(f"task-grouped batch of {x.shape[0]} rows does not split into {n} tasks")
        channels, batch = self.num_features, x.shape[0] // n
        grouped = x.reshape(batch, n * channels, *x.shape[2:])  # a view: rows are (example, task)
        # the same γ, β for every task (``cat`` is cheaper than ``repeat`` for these small vectors)
        weight = None if self.weight is None else torch.cat([self.weight] * n)
        bias = None if self.bias is None else torch.cat([self.bias] * n)
        if not self.track_running_stats or self.running_mean is None:
            return F.batch_norm(grouped, None, None, weight, bias, True, 0.0, self.eps).view_as(x)
        # momentum 1 leaves the batch statistics of every (task, channel) in these buffers
        stats = x.new_zeros((2, n * channels), dtype=self.running_mean.dtype)
        out = F.batch_norm(grouped, stats[0], stats[1], weight, bias, True, 1.0, self.eps)
        mode.pending.append((self, stats.view(2, n, channels)))
        return out.view_as(x)


def _update_running(pending: list[tuple[nn.Module, torch.Tensor]], n: int) -> None:
    """T updates in task order for every layer, from their (2, T, C) batch statistics."""
    if not pending:
        return
    with torch.no_grad():
        by_kind: dict[tuple, list[tuple[nn.Module, torch.Tensor]]] = {}
        for layer, stats in pending:
            if layer.momentum is None:  # cumulative average: one task after the other
                for k in range(n):
                    layer.num_batches_tracked.add_(1)
                    factor = 1.0 / float(layer.num_batches_tracked)
                    layer.running_mean.lerp_(stats[0, k], factor)
                    layer.running_var.lerp_(stats[1, k], factor)
            else:
                by_kind.setdefault((layer.momentum, stats.dtype, stats.device), []).append((layer, stats))
        for (m, dtype, device), items in by_kind.items():
            weights = _decay_weights(m, n, dtype, device)
            update = weights @ torch.cat([stats for _, stats in items], dim=2)  # (2, ΣC)
            sizes = [stats.shape[2] for _, stats in items]
            running = [layer.running_mean for layer, _ in items] + [layer.running_var for layer, _ in items]
            torch._foreach_mul_(running, (1.0 - m) ** n)
            torch._foreach_add_(running, list(update[0].split(sizes)) + list(update[1].split(sizes)))
            torch._foreach_add_([layer.num_batches_tracked for layer, _ in items], n)


_DECAY: dict[tuple, torch.Tensor] = {}


def _decay_weights(m: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``m (1−m)^(T−k)`` for k = 1..T (cached: one small tensor per momentum, T, dtype and device)."""
    key = (m, n, dtype, device)
    if key not in _DECAY:
        _DECAY[key] = torch.tensor([m * (1.0 - m) ** (n - 1 - k) for k in range(n)], dtype=dtype, device=device)
    return _DECAY[key]


class TaskBatchNorm1d(_TaskAware, nn.BatchNorm1d):
    pass


class TaskBatchNorm2d(_TaskAware, nn.BatchNorm2d):
    pass


class TaskBatchNorm3d(_TaskAware, nn.BatchNorm3d):
    pass


def supports_task_groups(module: nn.Module) -> bool:
    """True when every BatchNorm inside ``module`` is task-aware (others normalise per example)."""
    return all(isinstance(m, _TaskAware) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
