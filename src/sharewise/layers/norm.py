"""Task-aware BatchNorm: a task-stacked batch normalised as T separate passes would be.

Batched execution (AdaShare's search with the task dimension folded into the batch) runs a
block once on ``(B·T, ...)`` activations; normalisation must still behave as T separate passes.
Inside :func:`~sharewise.layers.context.task_groups` the batch is task-interleaved (row
``b·T + t`` is example b of task t) and every :class:`TaskBatchNorm2d` (1d, 3d) in training mode
normalises each task's rows with their own batch statistics; the running statistics end as T
calls in task order would leave them (AdaShare §10.1). Inside
:func:`~sharewise.layers.context.repeated_passes` a layer computed once for T identical inputs
updates its running statistics T times. Layers announced to ``task_groups`` get their γ, β
repeated for the tasks and their batch statistics gathered shape by shape, a few operations for
all of them together. :class:`PerTaskBatchNorm` keeps γ, β and statistics per task (AdaShare's
``task_bn``); :func:`per_task_norms` swaps them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .context import TaskContext, current, register_group_hooks
from .per_task import replace_modules


@dataclass
class _Group:
    """Announced layers of one width (and momentum, dtype, device): γ and β repeated for every
    task in one operation each, ``(T·C,)`` rows of a ``(K, T·C)`` tensor, and one ``(K, 2, T·C)``
    buffer for their batch statistics; ``called``: which layers ran (only those are updated)."""

    layers: list[nn.Module]
    weight: tuple[torch.Tensor, ...]
    bias: tuple[torch.Tensor, ...]
    stats: torch.Tensor
    called: list[bool]


class _TaskAware:
    """Task groups: the interleaved ``(B·T, C, ...)`` batch is viewed, without a copy, as
    ``(B, T·C, ...)``, so one native call normalises every (task, channel) pair with its own batch
    statistics (γ, β repeated for every task); the running
    statistics take the closed form of T updates in task order,
    ``r_T = (1−m)^T r_0 + m Σ_k (1−m)^(T−k) μ_k``. Repeated passes over one input: one native call
    with momentum ``1 − (1 − m)^T``, the same closed form with μ_k = μ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        plain = super().forward
        mode = current()
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

    def _grouped(self, x: torch.Tensor, mode: TaskContext) -> torch.Tensor:
        n = mode.tasks
        if x.shape[0] % n:
            raise ValueError(f"task-grouped batch of {x.shape[0]} rows does not split into {n} tasks")
        channels, batch = self.num_features, x.shape[0] // n
        grouped = x.reshape(batch, n * channels, *x.shape[2:])  # a view: rows are (example, task)
        slot = mode.prepared.get(self)
        if slot is not None and not slot[0].called[slot[1]]:  # announced (a second call: per layer)
            group, i = slot
            group.called[i] = True
            stats = group.stats[i]
            return F.batch_norm(grouped, stats[0], stats[1], group.weight[i], group.bias[i], True, 1.0,
                                self.eps).view_as(x)
        # the same γ, β for every task: expanded then copied, so backward is one sum over the tasks
        # (``cat`` costs T slices and T − 1 additions in backward; ``repeat`` is slower forward)
        weight = None if self.weight is None else self.weight.expand(n, channels).reshape(-1)
        bias = None if self.bias is None else self.bias.expand(n, channels).reshape(-1)
        if not self.track_running_stats or self.running_mean is None:
            return F.batch_norm(grouped, None, None, weight, bias, True, 0.0, self.eps).view_as(x)
        # momentum 1 leaves the batch statistics of every (task, channel) in these buffers
        stats = x.new_zeros((2, n * channels), dtype=self.running_mean.dtype)
        out = F.batch_norm(grouped, stats[0], stats[1], weight, bias, True, 1.0, self.eps)
        mode.pending.append((self, stats.view(2, n, channels)))
        return out.view_as(x)


def _prepare(mode: TaskContext, layers: Sequence[nn.Module]) -> None:
    """Group the announced layers by width: γ, β repeated for the tasks and one statistics buffer each."""
    n = mode.tasks
    by_key: dict[tuple, list[nn.Module]] = {}
    for layer in layers:  # cumulative averages, no γ/β or no running statistics: the per-layer path
        if (layer.training and layer.affine and layer.track_running_stats and layer.momentum is not None
                and layer not in mode.prepared):
            key = (layer.num_features, layer.momentum, layer.weight.dtype, layer.running_mean.dtype, layer.weight.device)
            by_key.setdefault(key, []).append(layer)
    for (channels, _, _, stats_dtype, device), group in by_key.items():
        k = len(group)

        def repeated(params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            # copied, not viewed: backward is then one sum over the tasks for the whole group
            return torch.stack(params).unsqueeze(1).expand(k, n, channels).reshape(k, n * channels).unbind(0)

        # momentum 1 leaves the batch statistics in these rows; zeros, since 0 · NaN is NaN
        stats = torch.zeros(k, 2, n * channels, dtype=stats_dtype, device=device)
        entry = _Group(group, repeated([layer.weight for layer in group]), repeated([layer.bias for layer in group]),
                       stats, [False] * k)
        for i, layer in enumerate(group):
            mode.prepared[layer] = (entry, i)


def _finish(mode: TaskContext) -> None:
    """The end of a ``task_groups`` context: running statistics of every layer that ran."""
    _update_groups(mode)  # an announced layer's first call: before any later call of the same layer
    _update_running(mode.pending, mode.tasks)


def _update_groups(mode: TaskContext) -> None:
    """The announced layers that ran: T updates in task order, from their group's statistics."""
    n = mode.tasks
    groups = {id(group): group for group, _ in mode.prepared.values()}.values()  # in announcement order
    with torch.no_grad():
        for group in groups:
            if not any(group.called):
                continue
            index = [i for i, called in enumerate(group.called) if called]
            layers = [group.layers[i] for i in index]
            stats = group.stats if len(index) == len(group.layers) else group.stats[index]
            m = layers[0].momentum
            # (T,) @ (K, 2, T, C) -> (K, 2, C): the closed form's weighted sum over the tasks
            update = _decay_weights(m, n, stats.dtype, stats.device) @ stats.view(len(layers), 2, n, -1)
            running = [layer.running_mean for layer in layers] + [layer.running_var for layer in layers]
            torch._foreach_mul_(running, (1.0 - m) ** n)
            torch._foreach_add_(running, list(update[:, 0].unbind(0)) + list(update[:, 1].unbind(0)))
            torch._foreach_add_([layer.num_batches_tracked for layer in layers], n)


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


register_group_hooks(_prepare, _finish)


class TaskBatchNorm1d(_TaskAware, nn.BatchNorm1d):
    pass


class TaskBatchNorm2d(_TaskAware, nn.BatchNorm2d):
    pass


class TaskBatchNorm3d(_TaskAware, nn.BatchNorm3d):
    pass


class PerTaskBatchNorm(nn.Module):
    """BatchNorm with its own γ, β and running statistics per task (AdaShare's ``task_bn``).

    Parameters and buffers are (T, C). Which task's row is used comes from the context:
    :func:`single_task` (one pass) or :func:`task_groups` (task-interleaved rows, normalised in
    one native call with every task's row as its own channels, so each task's statistics get
    exactly the update a pass of its own would give). A call outside both is an error: the
    layer cannot know whose statistics to use.
    """

    # row t of every parameter belongs to task t alone (the model's task order): cost accounting
    # puts only that row on task t's path
    per_task_rows = True

    def __init__(self, num_tasks: int, num_features: int, dims: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_tasks, self.num_features, self.dims = num_tasks, num_features, dims
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_tasks, num_features))
        self.bias = nn.Parameter(torch.zeros(num_tasks, num_features))
        self.register_buffer("running_mean", torch.zeros(num_tasks, num_features))
        self.register_buffer("running_var", torch.ones(num_tasks, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_tasks, dtype=torch.long))

    @classmethod
    def from_shared(cls, layer: nn.modules.batchnorm._BatchNorm, num_tasks: int, dims: int) -> PerTaskBatchNorm:
        """T copies of ``layer``'s parameters and statistics."""
        new = cls(num_tasks, layer.num_features, dims, layer.eps, 0.1 if layer.momentum is None else layer.momentum)
        with torch.no_grad():
            if layer.affine:
                new.weight.copy_(layer.weight.expand(num_tasks, -1))
                new.bias.copy_(layer.bias.expand(num_tasks, -1))
            if layer.track_running_stats:
                new.running_mean.copy_(layer.running_mean.expand(num_tasks, -1))
                new.running_var.copy_(layer.running_var.expand(num_tasks, -1))
        return new

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, features={self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = current()
        if mode is None or mode.kind == "repeat":
            raise RuntimeError("PerTaskBatchNorm (task_bn) is called outside a task context: run it through "
                               "sharewise.layers.context (single_task / task_groups)")
        ids = mode.ids if mode.ids is not None else tuple(range(mode.tasks))
        n = len(ids)
        if x.shape[0] % n:
            raise ValueError(f"task-grouped batch of {x.shape[0]} rows does not split into {n} tasks")
        grouped = x.reshape(x.shape[0] // n, n * self.num_features, *x.shape[2:])
        every = ids == tuple(range(self.num_tasks))
        index = None if every else torch.tensor(ids, device=x.device)
        rows = (lambda t: t.reshape(-1)) if every else (lambda t: t.index_select(0, index).reshape(-1))
        if self.training:
            mean, var = rows(self.running_mean), rows(self.running_var)  # views when every task, in order
            out = F.batch_norm(grouped, mean, var, rows(self.weight), rows(self.bias), True, self.momentum, self.eps)
            if not every:  # write the updated rows back
                self.running_mean.index_copy_(0, index, mean.view(n, -1))
                self.running_var.index_copy_(0, index, var.view(n, -1))
            self.num_batches_tracked.index_add_(0, torch.tensor(ids, device=x.device),
                                                torch.ones(n, dtype=torch.long, device=x.device))
        else:
            out = F.batch_norm(grouped, rows(self.running_mean), rows(self.running_var), rows(self.weight),
                               rows(self.bias), False, 0.0, self.eps)
        return out.view_as(x)


def per_task_norms(module: nn.Module, num_tasks: int) -> int:
    """Replace every task-aware BatchNorm inside ``module`` by a :class:`PerTaskBatchNorm`
    (copies of its parameters for each task); returns how many were replaced."""
    dims = {TaskBatchNorm1d: 0, TaskBatchNorm2d: 2, TaskBatchNorm3d: 3}
    return replace_modules(module, lambda child: PerTaskBatchNorm.from_shared(child, num_tasks, dims[type(child)])
                           if type(child) in dims else None)


def has_per_task_norms(module: nn.Module) -> bool:
    return any(isinstance(m, PerTaskBatchNorm) for m in module.modules())


def supports_task_groups(module: nn.Module) -> bool:
    """True when every BatchNorm inside ``module`` is task-aware (others normalise per example)."""
    return all(isinstance(m, _TaskAware) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def task_aware_norms(module: nn.Module) -> tuple[nn.Module, ...]:
    """The task-aware BatchNorms inside ``module``, in module order (for :func:`task_groups`)."""
    return tuple(m for m in module.modules() if isinstance(m, _TaskAware))


__all__ = ["PerTaskBatchNorm", "TaskBatchNorm1d", "TaskBatchNorm2d", "TaskBatchNorm3d", "has_per_task_norms",
           "per_task_norms", "supports_task_groups", "task_aware_norms"]
