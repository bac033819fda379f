"""What ``mrn`` and ``dmtrl`` share: a trunk of per-task-weight layers (one column per task, a
ReLU after every layer, §4.4–4.5), optionally below ``shared_layers`` shared ones, and per-task
linear heads, on the soft-sharing model's forward (:class:`._soft.SoftSharingModel`: features
``(B, n, D)`` for the tasks called, the whole-batch hook for per-task data)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import TaskConv2d, TaskLinear, TaskWeightLayer
from ..tasks import Task
from ._soft import SoftOptions, SoftSharingModel


def layer_dims(in_features: int, widths: Sequence[int]) -> list[tuple[int, int]]:
    dims = [in_features, *widths]
    return list(zip(dims[:-1], dims[1:]))


class TaskColumnsModel(SoftSharingModel):
    """``shared`` layers (plain ``nn.Linear`` / ``nn.Conv2d``, computed once for a shared input),
    then per-task-weight ``columns``; ReLU (and the conv trunk's pooling) after each."""

    def __init__(self, tasks: Sequence[Task], opts: SoftOptions, shared: Sequence[nn.Module],
                 columns: Sequence[TaskWeightLayer]) -> None:
        super().__init__(tasks, opts.widths[-1], opts)
        self.shared = nn.ModuleList(shared)
        self.columns = nn.ModuleList(columns)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return self._after_layer(F.relu(h))

    def _shared(self, h: torch.Tensor, stacked: bool) -> torch.Tensor:
        for layer in self.shared:
            if stacked:
                out = layer(h.flatten(0, 1))
                h = self._act(out.view(*h.shape[:2], *out.shape[1:]))
            else:
                h = self._act(layer(h))
        return h

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        h = self._shared(x, stacked=False)
        if not self.columns:  # every layer shared
            return h.unsqueeze(1).expand(h.shape[0], len(ids), *h.shape[1:])
        h = self._act(self.columns[0](h, ids))  # the shared input enters every column
        for layer in self.columns[1:]:
            h = self._act(layer(h, ids))
        return h

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        h = self._shared(x, stacked=True)
        for layer in self.columns:
            h = self._act(layer(h, ids))
        return h

    def shared_modules(self) -> list[nn.Module]:
        return [self.shared, self.columns]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self._split_no_decay({"backbone": [*self.shared.parameters(), *self.columns.parameters()],
                                     "heads": list(self.heads.parameters())})

    def regularization(self, c: float) -> torch.Tensor:
        """``Σ_layers layer.regularization(c)``."""
        return sum((layer.regularization(c) for layer in self.columns), next(self.heads.parameters()).new_zeros(()))


def make_shared(opts: SoftOptions, dims: list[tuple[int, int]]) -> list[nn.Module]:
    k = opts.kernel_size
    if opts.trunk == "conv":
        return [nn.Conv2d(a, b, k, padding=k // 2) for a, b in dims]
    return [nn.Linear(a, b) for a, b in dims]


def make_columns(opts: SoftOptions, dims: list[tuple[int, int]], names: list[str],
                 linear: Callable[..., TaskWeightLayer] = TaskLinear,
                 conv: Callable[..., TaskWeightLayer] = TaskConv2d, **kw) -> list[TaskWeightLayer]:
    """One per-task-weight layer per ``(in, out)`` of ``dims``: ``linear(a, b, T, task_names=…, **kw)``
    or, on a conv trunk, ``conv(a, b, kernel_size, T, padding=k // 2, task_names=…, **kw)``."""
    k = opts.kernel_size
    if opts.trunk == "conv":
        return [conv(a, b, k, len(names), padding=k // 2, task_names=names, **kw) for a, b in dims]
    return [linear(a, b, len(names), task_names=names, **kw) for a, b in dims]
