"""Multi-gate mixture of experts (Ma et al., KDD 2018; spec §4.2).

E experts ``f_e`` are computed once for all tasks; task t reads ``h_t(x) = Σ_e g_{t,e}(x) f_e(x)``
with its gate ``g_t(x) = softmax(G_t x)`` (``G_t ∈ R^{E×d_gate}``, no bias, init 0.01·N(0, 1):
near-uniform). For feature maps the gate reads the input's spatial mean ``(B, C)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._task_arg import check_task_names, resolve_task
from .per_task import TaskRows


class MMoE(nn.Module):
    """``MMoE(in_features, out_features, num_tasks, num_experts=6)``: experts Linear + ReLU by
    default, or ``experts=[module, ...]`` (any modules with outputs of one shape; then
    ``in_features`` is the gate's input width: the vector width or the channels of a feature map).

    ``forward(x, task)``: ``x (B, in_features)`` or ``(B, C, H, W)`` (shared input); ``task`` an
    int or name → ``(B, ...)``; None (or a ``single_task`` context) / a list of ids →
    ``(B, n, ...)``. ``regularization(c)`` is 0 (no load-balancing term in MMoE).
    """

    def __init__(self, in_features: int, out_features: int | None, num_tasks: int, num_experts: int = 6, *,
                 experts: Sequence[nn.Module] | None = None, expert: Callable[[], nn.Module] | None = None,
                 task_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.num_tasks = int(num_tasks)
        self.task_names = check_task_names(self.num_tasks, task_names)
        if experts is None:
            if num_experts < 1:
                raise ValueError(f"num_experts must be >= 1 (got {num_experts})")
            make = expert or (lambda: nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU()))
            experts = [make() for _ in range(num_experts)]
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(self.experts)
        self.in_features, self.out_features = in_features, out_features
        self.gate_rows = TaskRows(torch.randn(self.num_tasks, self.num_experts, in_features) * 0.01)  # (T, E, d_gate)

    @property
    def gates(self) -> nn.Parameter:
        """The gate matrices G (T, E, d_gate), a row per task on each task's path."""
        return self.gate_rows.value

    def gate_weights(self, x: torch.Tensor, ids: Sequence[int] | None = None) -> torch.Tensor:
        """``softmax(G_t x)`` over the experts, ``(B, n, E)``."""
        g = x if x.ndim == 2 else x.flatten(2).mean(-1)  # feature maps: spatial mean (B, C)
        gates = self.gates if ids is None else self.gates[list(ids)]
        return torch.softmax(torch.einsum("ted,bd->bte", gates, g), dim=-1)

    def forward(self, x: torch.Tensor, task=None) -> torch.Tensor:
        if x.ndim not in (2, 4):
            raise ValueError(f"MMoE: expected a shared input (B, {self.in_features}) or (B, C, H, W), got {tuple(x.shape)} "
                             "(the experts and gates read one input for all tasks)")
        single, ids = resolve_task(task, self.num_tasks, self.task_names)
        outs = torch.stack([e(x) for e in self.experts], 1)  # (B, E, ...)
        weights = self.gate_weights(x, ids)  # (B, n, E)
        mixed = torch.einsum("bne,be...->bn...", weights, outs)
        return mixed[:, 0] if single is not None else mixed

    def regularization(self, c: float) -> torch.Tensor:
        return self.gates.new_zeros(())
