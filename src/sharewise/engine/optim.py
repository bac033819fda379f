"""Optimisers and LR schedules from an :class:`~sharewise.methods.base.OptimSpec`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..methods.base import OptimSpec


def build_optimizer(spec: OptimSpec, groups: dict[str, list[nn.Parameter]], *,
                    flat: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``spec`` over the named parameter groups (frozen parameters left out).

    ``flat``: step every group as one contiguous buffer (:class:`FlatOptimizer`, the same numbers
    and state as the per-tensor optimiser) where all its parameters are float tensors of one dtype
    on one CPU or CUDA device and some group holds more than one."""
    param_groups = []
    for name, lr in spec.lrs.items():
        params = [p for p in groups.get(name, []) if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": lr, "name": name,
                                 **({"weight_decay": 0.0} if name in spec.no_decay else {})})
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


# Torch's fused CPU kernels step a tensor in cache-line units with vector code, but its last
# (size % vector width) elements with scalar code, which can round differently. So only tensors of
# whole cache lines go into a buffer (back to back, each starting on a cache line, as its own
# allocation would): there their elements take the code they take alone. The others stay ordinary
# tensors in the inner optimiser's group, stepped by the same single kernel call; every tensor thus
# gets torch's per-tensor bits exactly. (Until 2026-12-04 they were padded into the buffer, which
# moved their last few elements' last bit; see docs/benchmarks.md.)
ALIGN_BYTES = 64


class FlatOptimizer(torch.optim.Optimizer):
    """A torch optimiser stepping each parameter group as one contiguous buffer, with the numbers
    and the state of torch's per-tensor optimiser (``make``'s), bit for bit.

    The group's parameters of whole cache lines (:data:`ALIGN_BYTES`; most weights) become views
    into one buffer, the others (a 10-class head's bias) stay as they are beside it. Backward
    fills their gradients as usual (ordinary tensors); ``step`` copies them into a second buffer,
    and an inner fused optimiser (built by ``make``) steps the buffer, one kernel for the whole
    group. What goes is the cost
    per tensor (on a CPU about 5 µs a tensor, a tenth of a small network's training step).
    ``param_groups`` keep the model's parameters (freezing, clipping, gradient averaging and LR
    schedules work on them as usual).

    A per-tensor optimiser does not step a parameter without a gradient (its moments, weight
    decay and step count stay), which one buffer with one step count cannot do. So on the first
    step where some parameter of a group has no gradient, that group goes per tensor for the rest
    of the optimiser's life: its parameters (the flattened ones still views into the buffer) join
    an ordinary optimiser built by ``make``, each with its part of the group's flat state, and are
    stepped by it from then on; groups whose parameters all keep getting gradients stay flat.
    A flattened parameter moved or replaced after construction (``.to()``, ``.data = ...``) is no
    longer in the buffer: the next step raises instead of training nothing. (Gradients as views
    into the buffer, accumulated in place by backward, would save the copy but made a 32-px
    ResNet's backward 10–18 % slower.)
    """

    def __init__(self, param_groups: list[dict[str, Any]],
                 make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]) -> None:
        super().__init__(param_groups, {})
        self._make = make
        self._flat = [_FlatGroup(group["params"]) for group in self.param_groups]
        self.inner = make([{**_hyper(group), "params": flat.inner_params()}
                           for group, flat in zip(self.param_groups, self._flat)])
        # the groups stepped per tensor (indices into param_groups, in the order they went)
        self._per_tensor: torch.optim.Optimizer | None = None
        self._per_tensor_groups: list[int] = []

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        stepped_flat = False
        for i, (group, flat) in enumerate(zip(self.param_groups, self._flat)):
            if flat.param is not None and flat.flattened[0].data_ptr() != flat.param.data_ptr():
                # module.to() moves them all: one check is enough
                raise RuntimeError("FlatOptimizer: the parameters were moved or replaced after the optimiser was "
                                   "built (e.g. by module.to()); build the optimiser after moving the model")
            if i in self._per_tensor_groups:
                continue  # stepped from the parameters' own gradients
            if any(p.grad is None for p in group["params"]):
                self._go_per_tensor(i)
                continue
            if flat.param is not None:  # the step's gradients into the buffer in one call
                torch._foreach_copy_(flat.grad_views, [p.grad for p in flat.flattened])
            stepped_flat = True
        # hyper-parameters (a scheduler's lr) live in the outer groups
        for group, inner_group in zip(self.param_groups, self.inner.param_groups):
            inner_group.update(_hyper(group))
        if stepped_flat:
            self.inner.step()
        if self._per_tensor is not None:
            for i, inner_group in zip(self._per_tensor_groups, self._per_tensor.param_groups):
                inner_group.update(_hyper(self.param_groups[i]))
            self._per_tensor.step()
        return loss

    def _go_per_tensor(self, i: int) -> None:
        """Group ``i`` from now on per tensor: its parameters leave the inner optimiser for the
        per-tensor one with their state; a flattened one takes its slice of each of the buffer's
        state tensors (``exp_avg``, ``momentum_buffer``) and a copy of the rest (``step``)."""
        group, flat = self.param_groups[i], self._flat[i]
        inner_group = self.inner.param_groups[i]
        states = {p: self.inner.state.pop(p) for p in inner_group["params"] if p in self.inner.state}
        inner_group["params"] = []
        flat.drop_gradient_buffer()
        per_tensor_group = {**_hyper(group), "params": list(group["params"])}
        if self._per_tensor is None:
            self._per_tensor = self._make([per_tensor_group])
        else:
            self._per_tensor.add_param_group(per_tensor_group)
        self._per_tensor_groups.append(i)
        buffer_state = states.pop(flat.param, {}) if flat.param is not None else {}
        for p, offset in zip(flat.flattened, flat.offsets):
            states[p] = {key: value[offset:offset + p.numel()].view_as(p).clone()
                         if torch.is_tensor(value) and value.shape == flat.param.shape else copy.deepcopy(value)
                         for key, value in buffer_state.items()}
        for p, state in states.items():
            if state:
                self._per_tensor.state[p] = state

    def state_dict(self) -> dict[str, Any]:
        out = {"flat": self.inner.state_dict(), "groups": [_hyper(g) for g in self.param_groups]}
        if self._per_tensor is not None:
            out["per_tensor"] = {"groups": list(self._per_tensor_groups), "state": self._per_tensor.state_dict()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "flat" not in state_dict or len(state_dict["groups"]) != len(self.param_groups):
            raise ValueError("optimiser state is not that of a flat optimiser over these parameter groups")
        per_tensor = state_dict.get("per_tensor")
        if per_tensor is not None:
            indices = per_tensor["groups"]
            if len(set(indices)) != len(indices) or not all(0 <= i < len(self.param_groups) for i in indices):
                raise ValueError(f"optimiser state steps groups {indices} per tensor, but there are "
                                 f"{len(self.param_groups)} groups")
        # every group flat again, then the saved ones per tensor, in the order they went (so that
        # the inner optimiser's groups hold what they held when saved)
        for flat, inner_group in zip(self._flat, self.inner.param_groups):
            flat.attach_gradient_buffer()
            inner_group["params"] = flat.inner_params()
        self.inner.state.clear()
        self._per_tensor, self._per_tensor_groups = None, []
        for i in per_tensor["groups"] if per_tensor is not None else []:
            self._go_per_tensor(i)
        self.inner.load_state_dict(state_dict["flat"])
        for p, state in self.inner.state.items():
            if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in state.values()):
                raise ValueError("optimiser state is that of a flat optimiser over other parameters (or another "
                                 "layout of their buffer)")
        for group, saved in zip(self.param_groups, state_dict["groups"]):
            group.update(saved)
        if per_tensor is not None:
            self._per_tensor.load_state_dict(per_tensor["state"])


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group's hyper-parameters (everything but its parameters)."""
    return {k: v for k, v in group.items() if k != "params"}


class _FlatGroup:
    """One parameter group's buffer: ``flattened`` (the group's parameters of whole cache lines)
    are views into it from ``offsets`` (back to back, so each on a cache line); ``separate``: the
    group's other parameters, stepped as themselves; ``param``: the inner optimiser's parameter
    over the buffer (None when no parameter is of whole cache lines); ``grad_views``: each
    flattened parameter's slice of the gradient buffer (``param.grad``), None once the group is
    stepped per tensor."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        whole = [p.numel() * p.element_size() % ALIGN_BYTES == 0 for p in params]
        self.flattened = [p for p, w in zip(params, whole) if w]
        self.separate = [p for p, w in zip(params, whole) if not w]
        self.offsets, total = [], 0
        for p in self.flattened:
            self.offsets.append(total)
            total += p.numel()
        self.param: nn.Parameter | None = None
        self.grad_views: list[torch.Tensor] | None = None
        if not self.flattened:
            return
        values = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        with torch.no_grad():
            for p, offset in zip(self.flattened, self.offsets):
                values[offset:offset + p.numel()].copy_(p.reshape(-1))
                p.data = values[offset:offset + p.numel()].view_as(p)
        self.param = nn.Parameter(values)
        self.attach_gradient_buffer()

    def inner_params(self) -> list[nn.Parameter]:
        return ([self.param] if self.param is not None else []) + self.separate

    def attach_gradient_buffer(self) -> None:
        if self.grad_views is not None or self.param is None:
            return
        grads = torch.zeros_like(self.param)
        self.grad_views = [grads[o:o + p.numel()].view_as(p) for p, o in zip(self.flattened, self.offsets)]
        self.param.grad = grads

    def drop_gradient_buffer(self) -> None:
        self.grad_views = None
        if self.param is not None:
            self.param.grad = None


def build_scheduler(spec: OptimSpec, optimizer: torch.optim.Optimizer, total_steps: int):
    """Stepped once per optimiser step (iteration), as the AdaShare reference does."""
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return None
