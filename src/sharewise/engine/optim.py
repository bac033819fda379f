"""Optimisers and LR schedules from an :class:`~sharewise.methods.base.OptimSpec`."""

from __future__ import annotations

import torch
from torch import nn

from ..methods.base import OptimSpec


def build_optimizer(spec: OptimSpec, groups: dict[str, list[nn.Parameter]]) -> torch.optim.Optimizer:
    param_groups = []
    for name, lr in spec.lrs.items():
        params = [p for p in groups.get(name, []) if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr, "name": name})
    if not param_groups:
        raise ValueError(f"optimiser over groups {list(spec.lrs)} has no parameters")
    params = [p for g in param_groups for p in g["params"]]
    if spec.kind == "sgd":
        return torch.optim.SGD(param_groups, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               **fast_kwargs(params))
    cls = torch.optim.AdamW if spec.kind == "adamw" else torch.optim.Adam
    return cls(param_groups, betas=spec.betas, weight_decay=spec.weight_decay, **fast_kwargs(params))


def fast_kwargs(params: list[nn.Parameter]) -> dict[str, bool]:
    """``fused=True`` (one kernel for every parameter: 3-5× faster steps for small networks on a
    CPU) where all parameters are floating point on a CPU or CUDA device; otherwise torch's default."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {}


def build_scheduler(spec: OptimSpec, optimizer: torch.optim.Optimizer, total_steps: int):
    """Stepped once per optimiser step (iteration), as the AdaShare reference does."""
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return None
