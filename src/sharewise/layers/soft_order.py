"""Soft layer ordering (Meyerson & Miikkulainen, ICLR 2018; spec §4.3).

L shared layers ``F_1..F_L`` of one width are applied at D depths, mixed per task::

    h_d = Σ_j softmax(S[t, d, :])_j · F_j(h_{d−1}),   d = 1..D,   S ∈ R^{T×D×L} (init 0.01·N(0, 1))

The encoder before and the heads after the core belong to the model, not to this layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._task_arg import check_task_names, resolve_task
from .per_task import TaskRows


class SoftOrdering(nn.Module):
    """``SoftOrdering(width, num_tasks, num_layers=2, depth=None)`` (layers Linear + ReLU by
    default, or ``layers=[module, ...]`` of equal input and output shape; ``depth`` D defaults
    to L).

    ``forward(h, task)``: ``h (B, width)`` shared or ``(B, T, width)`` per task (``(B, ...)`` for
    other layer shapes); ``task`` an int or name → ``(B, width)``; None (or a ``single_task``
    context) / a list of ids → ``(B, n, width)``. With a shared input the first depth's layers run
    once for all tasks. ``regularization(c)`` is 0.
    """

    def __init__(self, width: int | None, num_tasks: int, num_layers: int = 2, depth: int | None = None, *,
                 layers: Sequence[nn.Module] | None = None, layer: Callable[[], nn.Module] | None = None,
                 task_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.num_tasks = int(num_tasks)
        self.task_names = check_task_names(self.num_tasks, task_names)
        if layers is None:
            make = layer or (lambda: nn.Sequential(nn.Linear(width, width), nn.ReLU()))
            layers = [make() for _ in range(num_layers)]
        self.shared_layers = nn.ModuleList(layers)
        self.num_layers = len(self.shared_layers)
        self.depth = int(depth) if depth is not None else self.num_layers
        if self.depth < 1 or self.num_layers < 1:
            raise ValueError(f"SoftOrdering needs >= 1 layer and depth >= 1 (got {self.num_layers}, {self.depth})")
        self.order_rows = TaskRows(torch.randn(self.num_tasks, self.depth, self.num_layers) * 0.01)  # S (T, D, L)

    @property
    def order_logits(self) -> nn.Parameter:
        """The per-task ordering logits S (T, D, L), a row per task on each task's path."""
        return self.order_rows.value

    def _all_layers(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([f(h) for f in self.shared_layers], 1)  # (N, L, ...)

    def forward(self, h: torch.Tensor, task=None, *, per_task: bool | None = None) -> torch.Tensor:
        """``per_task``: whether ``h`` carries a task axis at dim 1 (default: ``h.ndim == 3``)."""
        single, ids = resolve_task(task, self.num_tasks, self.task_names)
        weights = torch.softmax(self.order_logits[ids], dim=-1)  # (n, D, L)
        n = len(ids)
        stacked = h.ndim == 3 if per_task is None else per_task
        if not stacked:
            outs = self._all_layers(h)  # the first depth once for every task
            cur = torch.einsum("nl,bl...->bn...", weights[:, 0], outs)
        else:
            if h.shape[1] != n:
                raise ValueError(f"SoftOrdering: a per-task input needs one column per task ({n}), got {tuple(h.shape)}")
            b = h.shape[0]
            outs = self._all_layers(h.flatten(0, 1))
            outs = outs.view(b, n, *outs.shape[1:])
            cur = torch.einsum("nl,bnl...->bn...", weights[:, 0], outs)
        for d in range(1, self.depth):
            b = cur.shape[0]
            outs = self._all_layers(cur.flatten(0, 1))
            outs = outs.view(b, n, *outs.shape[1:])
            cur = torch.einsum("nl,bnl...->bn...", weights[:, d], outs)
        return cur[:, 0] if single is not None else cur

    def regularization(self, c: float) -> torch.Tensor:
        return self.order_logits.new_zeros(())
