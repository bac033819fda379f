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
    """Per-task normalisation in one fused call: the T groups become T·C channels of one
    ``F.batch_norm``; the running statistics then take the closed form of T sequential updates,
    ``r_T = (1−m)^T r_0 + m Σ_k (1−m)^{T−k} μ_k`` (unbiased variance likewise), §10.1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        plain = super().forward
        mode = _MODE.get()
        if mode is None or not self.training or mode[1] <= 1:
            return plain(x)
        kind, n = mode
        if self.momentum is None:  # cumulative averages: no closed form, run the passes one by one
            if kind == "repeat":
                for _ in range(n - 1):
                    plain(x)
                return plain(x)
            return torch.cat([plain(chunk) for chunk in x.chunk(n, dim=0)], dim=0)
        if kind == "repeat":
            return self._normalise(x.unsqueeze(0), repeats=n).squeeze(0)
        if x.shape[0] % n:
            raise ValueError(f"task-grouped batch of {x.shape[0]} rows does not split into {n} tasks")
        return self._normalise(x.reshape(n, x.shape[0] // n, *x.shape[1:]), repeats=1).reshape(x.shape)

    def _normalise(self, groups: torch.Tensor, repeats: int) -> torch.Tensor:
        """``groups``: (G, B, C, ...), each group normalised with its own batch statistics."""
        g, b, c = groups.shape[:3]
        rest = groups.shape[3:]
        merged = groups.transpose(0, 1).reshape(b, g * c, *rest)
        weight = self.weight.repeat(g) if self.affine else None
        bias = self.bias.repeat(g) if self.affine else None
        out = F.batch_norm(merged, None, None, weight, bias, True, 0.0, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                dims = [0, *range(2, merged.dim())]
                mean = merged.mean(dims).view(g, c)
                var = merged.var(dims, unbiased=True).view(g, c)
                if repeats > 1:
                    mean, var = mean.expand(repeats, c), var.expand(repeats, c)
                steps = mean.shape[0]
                m = float(self.momentum)
                decay = torch.tensor([(1 - m) ** (steps - 1 - k) for k in range(steps)], dtype=mean.dtype,
                                     device=mean.device)[:, None]
                keep = (1 - m) ** steps
                self.running_mean.mul_(keep).add_((m * decay * mean).sum(0).to(self.running_mean.dtype))
                self.running_var.mul_(keep).add_((m * decay * var).sum(0).to(self.running_var.dtype))
                self.num_batches_tracked.add_(steps)
        return out.reshape(b, g, c, *rest).transpose(0, 1)


class TaskBatchNorm1d(_TaskAware, nn.BatchNorm1d):
    pass


class TaskBatchNorm2d(_TaskAware, nn.BatchNorm2d):
    pass


class TaskBatchNorm3d(_TaskAware, nn.BatchNorm3d):
    pass


def supports_task_groups(module: nn.Module) -> bool:
    """True when every BatchNorm inside ``module`` is task-aware (others normalise per example)."""
    return all(isinstance(m, _TaskAware) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
