"""Optimisers and LR schedules from an :class:`~sharewise.methods.base.OptimSpec`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..methods.base import OptimSpec


def build_optimizer(spec: OptimSpec, groups: dict[str, list[nn.Parameter]], *,
                    flat: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``spec`` over the named parameter groups (frozen parameters left out).

    ``flat``: step every group as one contiguous buffer (:class:`FlatOptimizer`) where all its
    parameters are float tensors of one dtype on one CPU or CUDA device and some group holds more
    than one; only for phases where every parameter gets a gradient at every step
    (``Phase.dense_gradients``)."""
    param_groups = []
    for name, lr in spec.lrs.items():
        params = [p for p in groups.get(name, []) if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr, "name": name})
    if not param_groups:
        raise ValueError(f"optimiser over groups {list(spec.lrs)} has no parameters")
    params = [p for g in param_groups for p in g["params"]]
    fast = fast_kwargs(params)

    def make(groups_: list[dict[str, Any]]) -> torch.optim.Optimizer:
        if spec.kind == "sgd":
            return torch.optim.SGD(groups_, momentum=spec.momentum, weight_decay=spec.weight_decay, **fast)
        cls = torch.optim.AdamW if spec.kind == "adamw" else torch.optim.Adam
        return cls(groups_, betas=spec.betas, weight_decay=spec.weight_decay, **fast)

    # one tensor a group (AdaShare's policy logits) has nothing to flatten: the copy would only add
    if flat and fast and len(params) > len(param_groups) and len({(p.dtype, p.device) for p in params}) == 1:
        return FlatOptimizer(param_groups, make)
    return make(param_groups)


def fast_kwargs(params: list[nn.Parameter]) -> dict[str, bool]:
    """``fused=True`` (one kernel for every parameter: 3-5× faster steps for small networks on a
    CPU) where all parameters are floating point on a CPU or CUDA device; otherwise torch's default."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {}


ALIGN_BYTES = 64


class FlatOptimizer(torch.optim.Optimizer):
    """A torch optimiser stepping each parameter group as one contiguous buffer.

    The group's parameters become views into one buffer. Backward fills their gradients as usual
    (ordinary tensors); ``step`` copies them into a second buffer, and an inner fused optimiser
    (built by ``make``) steps the two buffers, one kernel for the whole group. The arithmetic is
    the inner optimiser's, element by element, so the parameters are bit-identical to stepping
    them one by one; what goes is the cost per tensor (on a CPU about 5 µs a tensor, a tenth of a
    small network's training step). ``param_groups`` keep the model's parameters (freezing,
    clipping, gradient averaging and LR schedules work on them as usual).

    A parameter without a gradient in a step is stepped with a zero one (its moments decay; a
    per-tensor optimiser would skip it): only for phases whose steps reach every parameter
    (``Phase.dense_gradients``). A parameter moved or replaced after construction (``.to()``,
    ``.data = ...``) is no longer in the buffer: the next step raises instead of training nothing.
    (Gradients as views into the buffer, accumulated in place by backward, would save the copy
    but made a 32-px ResNet's backward 10–18 % slower.)
    """

    def __init__(self, param_groups: list[dict[str, Any]],
                 make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]) -> None:
        super().__init__(param_groups, {})
        # per group: the value buffer and each parameter's slice of the gradient buffer (which the
        # inner optimiser's flat parameter holds as its .grad)
        self._buffers: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        inner_groups = []
        for group in self.param_groups:
            params = group["params"]
            # every tensor starts on a 64-byte boundary, as its own allocation would (vectorised
            # kernels expect that); the padding stays zero (a zero gradient moves a zero value by
            # nothing, weight decay included)
            align = max(1, ALIGN_BYTES // params[0].element_size())
            starts, total = [], 0
            for p in params:
                starts.append(total)
                total += -(-p.numel() // align) * align
            values = torch.zeros(total, dtype=params[0].dtype, device=params[0].device)
            grads = torch.zeros_like(values)
            views = []
            with torch.no_grad():
                for p, offset in zip(params, starts):
                    n = p.numel()
                    values[offset:offset + n].copy_(p.reshape(-1))
                    p.data = values[offset:offset + n].view_as(p)
                    views.append(grads[offset:offset + n].view_as(p))
            self._buffers.append((values, views))
            flat = nn.Parameter(values)
            flat.grad = grads
            inner_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [flat]})
        self.inner = make(inner_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group, inner_group, (values, views) in zip(self.param_groups, self.inner.param_groups, self._buffers):
            params = group["params"]
            if params[0].data_ptr() != values.data_ptr():  # module.to() moves them all: one check is enough
                raise RuntimeError("FlatOptimizer: the parameters were moved or replaced after the optimiser was "
                                   "built (e.g. by module.to()); build the optimiser after moving the model")
            # the step's gradients into the buffer in one call (a parameter without one: zero)
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                for view in (v for v, g in zip(views, grads) if g is None):
                    view.zero_()
                views, grads = [v for v, g in zip(views, grads) if g is not None], [g for g in grads if g is not None]
            if grads:
                torch._foreach_copy_(views, grads)
            # hyper-parameters (a scheduler's lr) live in the outer groups
            inner_group.update({k: v for k, v in group.items() if k != "params"})
        self.inner.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.inner.state_dict(),
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "flat" not in state_dict or len(state_dict["groups"]) != len(self.param_groups):
            raise ValueError("optimiser state is not that of a flat optimiser over these parameter groups")
        self.inner.load_state_dict(state_dict["flat"])
        for group, saved in zip(self.param_groups, state_dict["groups"]):
            group.update(saved)


def build_scheduler(spec: OptimSpec, optimizer: torch.optim.Optimizer, total_steps: int):
    """Stepped once per optimiser step (iteration), as the AdaShare reference does."""
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return None
