"""Routed layers of parameter allocation (Maziarz et al., "Flexible Multi-task Networks by
Learning Parameter Allocation", arXiv 1910.04915; spec ``parameter_allocation.md``).

A routed layer holds C parallel components with identical output shapes (§1); a router gives
each task a binary vector z ∈ {0,1}^C and the task's output is the mean of its selected
components (zeros if none, §2.4). Here:

- TF "same" padding and pooling (extra row/column at the bottom/right, average pooling without
  the padded cells, max pooling padded with −∞): :func:`pad_same`, :func:`conv2d_same`,
  :func:`max_pool_same`, :func:`avg_pool_same`;
- components (:class:`ConvComponent`: convolutions each with optional GroupNorm and ReLU;
  :class:`DenseComponent`; :class:`PoolComponent`; :class:`IdentityComponent`), each its own
  module with its own parameters (cost accounting counts a task's selected components only);
- :class:`RoutedLayer`: components of the same kind computed as one grouped operation
  (C convolutions of F filters on one input = one convolution of C·F filters; chained ones as
  grouped convolutions; a component's GroupNorm(g) = GroupNorm(g·n) over the concatenation),
  or only a chosen subset of them (inference: what no task selects is not computed);
- :func:`combine`: the mean (or sum) of the selected components, ``w = z / clamp(Σz, min=1)``;
- routers: :class:`GumbelMatrixRouter` (two logits per connection, straight-through
  Gumbel-sigmoid samples, deterministic threshold p ≥ 0.5) and :class:`FixedRouter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .gumbel import gumbel_sigmoid

Padding = Literal["same", "valid"]


# ----------------------------------------------------------------------------- TF "same"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF "same": output ``⌈size / stride⌉``, the odd cell after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """``x`` (…, H, W) padded as TF's "same" for a ``kernel`` (kh, kw) and ``stride`` (sh, sw)."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                groups: int = 1) -> torch.Tensor:
    """A convolution with TF "same" padding (asymmetric where TF's is)."""
    return F.conv2d(pad_same(x, weight.shape[-2:], (stride, stride)), weight, bias, stride, groups=groups)


def max_pool_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "same" max pooling: the padded cells are −∞, so they never win."""
    return F.max_pool2d(pad_same(x, (kernel, kernel), (stride, stride), value=-math.inf), kernel, stride)


def avg_pool_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "same" average pooling: the mean over the window's cells inside the input only."""
    total = F.avg_pool2d(pad_same(x, (kernel, kernel), (stride, stride)), kernel, stride)
    ones = x.new_ones((1, 1, *x.shape[-2:]))
    count = F.avg_pool2d(pad_same(ones, (kernel, kernel), (stride, stride)), kernel, stride)
    return total / count


# ----------------------------------------------------------------------------- components


def _cat(tensors: Sequence[torch.Tensor], detached: Sequence[bool]) -> torch.Tensor:
    parts = [t.detach() if d else t for t, d in zip(tensors, detached)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class ConvComponent(nn.Module):
    """A chain of convolutions, each followed by an optional GroupNorm and ReLU.

    ``ops``: one ``(filters, (kh, kw), stride, norm_groups or None, relu)`` per convolution.
    ``padding``: ``same`` (TF) or ``valid``. Also used as a plain shared layer (a stem)."""

    def __init__(self, in_channels: int, ops: Sequence[tuple[int, tuple[int, int], int, int | None, bool]], *,
                 padding: Padding = "same", eps: float = 1e-5) -> None:
        super().__init__()
        self.ops = [(int(f), (int(k[0]), int(k[1])), int(s), g, bool(r)) for f, k, s, g, r in ops]
        self.padding = padding
        self.eps = eps
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = in_channels
        for filters, kernel, _, groups, _ in self.ops:
            self.convs.append(nn.Conv2d(channels, filters, kernel))
            self.norms.append(nn.GroupNorm(groups, filters, eps=eps) if groups else nn.Identity())
            channels = filters
        self.in_channels = in_channels

    @property
    def signature(self) -> tuple:
        return ("conv", self.in_channels, tuple(self.ops), self.padding, self.eps)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, groups: int = 1):
        if self.padding == "same":
            return conv2d_same(x, weight, bias, stride, groups)
        return F.conv2d(x, weight, bias, stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (_, _, stride, groups, relu), conv, norm in zip(self.ops, self.convs, self.norms):
            x = self._conv(x, conv.weight, conv.bias, stride)
            if groups:
                x = norm(x)
            if relu:
                x = F.relu(x)
        return x

    @staticmethod
    def grouped(components: Sequence[ConvComponent], x: torch.Tensor,
                detached: Sequence[bool] | None = None) -> torch.Tensor:
        """``(B, n, …)``: n components of one signature on the same input as grouped operations;
        ``detached[k]``: component k's parameters get no gradient (its output still does)."""
        n, first = len(components), components[0]
        detached = detached or [False] * n
        h = x
        for i, (filters, _, stride, groups, relu) in enumerate(first.ops):
            weight = _cat([c.convs[i].weight for c in components], detached)
            bias = _cat([c.convs[i].bias for c in components], detached)
            h = first._conv(h, weight, bias, stride, groups=1 if i == 0 else n)
            if groups:
                gamma = _cat([c.norms[i].weight for c in components], detached)
                beta = _cat([c.norms[i].bias for c in components], detached)
                h = F.group_norm(h, groups * n, gamma, beta, first.eps)
            if relu:
                h = F.relu(h)
        return h.view(h.shape[0], n, h.shape[1] // n, *h.shape[2:])


class DenseComponent(nn.Module):
    """A linear layer with an optional ReLU (routed MLPs on vector inputs)."""

    def __init__(self, in_features: int, out_features: int, relu: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.relu = relu

    @property
    def signature(self) -> tuple:
        return ("dense", self.linear.in_features, self.linear.out_features, self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return F.relu(h) if self.relu else h

    @staticmethod
    def grouped(components: Sequence[DenseComponent], x: torch.Tensor,
                detached: Sequence[bool] | None = None) -> torch.Tensor:
        detached = detached or [False] * len(components)
        weight = _cat([c.linear.weight for c in components], detached)
        bias = _cat([c.linear.bias for c in components], detached)
        h = F.linear(x, weight, bias)
        if components[0].relu:
            h = F.relu(h)
        return h.view(h.shape[0], len(components), -1)


class PoolComponent(nn.Module):
    """TF "same" max or average pooling (stride 1 keeps the size)."""

    def __init__(self, kind: Literal["max", "avg"], kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.kind, self.kernel, self.stride = kind, kernel, stride

    @property
    def signature(self) -> tuple:
        return ("pool", self.kind, self.kernel, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = max_pool_same if self.kind == "max" else avg_pool_same
        return pool(x, self.kernel, self.stride)

    @staticmethod
    def grouped(components: Sequence[PoolComponent], x: torch.Tensor,
                detached: Sequence[bool] | None = None) -> torch.Tensor:
        """Identical parameter-free components on one input: computed once."""
        out = components[0](x)
        return out.unsqueeze(1).expand(out.shape[0], len(components), *out.shape[1:])


class IdentityComponent(nn.Module):
    @property
    def signature(self) -> tuple:
        return ("identity",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def grouped(components: Sequence[IdentityComponent], x: torch.Tensor,
                detached: Sequence[bool] | None = None) -> torch.Tensor:
        return x.unsqueeze(1).expand(x.shape[0], len(components), *x.shape[1:])


class RoutedLayer(nn.Module):
    """C parallel components with identical output shapes (§1).

    ``forward(x, index=None)`` -> ``(B, len(index), …)``: the components ``index`` (default all,
    in order) on the same input, those of one kind (``signature``) as one grouped operation."""

    def __init__(self, components: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(components) < 1:
            raise ValueError("a routed layer needs at least one component")
        self.components = nn.ModuleList(components)
        self.kinds: list[list[int]] = []  # component indices by signature, in order of first appearance
        seen: dict[tuple, int] = {}
        for j, c in enumerate(components):
            key = c.signature
            if key not in seen:
                seen[key] = len(self.kinds)
                self.kinds.append([])
            self.kinds[seen[key]].append(j)

    def __len__(self) -> int:
        return len(self.components)

    def forward(self, x: torch.Tensor, index: Sequence[int] | None = None,
                detached: Sequence[int] = ()) -> torch.Tensor:
        """``detached``: components whose parameters get no gradient from this call (those behind a
        zero routing weight: their outputs still reach the router's straight-through gradient)."""
        wanted = list(range(len(self.components))) if index is None else list(index)
        chosen, no_grad = set(wanted), set(detached)
        parts, order = [], []
        for members in self.kinds:
            picked = [j for j in members if j in chosen]
            if not picked:
                continue
            comps = [self.components[j] for j in picked]
            parts.append(type(comps[0]).grouped(comps, x, [j in no_grad for j in picked]))
            order.extend(picked)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if order != wanted:
            position = {j: i for i, j in enumerate(order)}
            out = out[:, [position[j] for j in wanted]]
        return out

    def looped(self, x: torch.Tensor, index: Sequence[int] | None = None) -> torch.Tensor:
        """The same as ``forward``, one component at a time (the reference for tests)."""
        wanted = list(range(len(self.components))) if index is None else list(index)
        return torch.stack([self.components[j](x) for j in wanted], dim=1)


def combine(outputs: torch.Tensor, z: torch.Tensor, aggregation: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """The task's output from its components' ``outputs`` (B, C, …) and binary ``z`` (C,) (§2.4).

    ``mean``: ``w_j = z_j / clamp(Σz, min=1)``, the mean of the selected components, all zeros when
    none is (the clamp passes the gradient at Σz = 1, where ``maximum`` would split it);
    ``sum``: ``w = z`` (``shared_bottom``'s reference aggregation, §4)."""
    weights = z / z.sum().clamp(min=1) if aggregation == "mean" else z
    return torch.einsum("c,bc...->b...", weights.to(outputs.dtype), outputs)


# ----------------------------------------------------------------------------- routers


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(Bern(p)) = −p log p − (1−p) log(1−p)`` elementwise (0 at p ∈ {0, 1})."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


class GumbelMatrixRouter(nn.Module):
    """The Gumbel-matrix of one routed layer: logits ``(tasks, components, 2)`` (on, off) (§2).

    Initialised to ``(log p0, log(1 − p0))``, so ``p = softmax(logits)[..., 0] = p0``.
    Training: one straight-through Gumbel-sigmoid sample per connection and step, shared by the
    batch; evaluation: ``z = 1[p ≥ 0.5]`` (a tie is active)."""

    learned = True

    def __init__(self, num_tasks: int, num_components: int, p0: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < p0 < 1.0:
            raise ValueError(f"p0 must be in (0, 1), got {p0}")
        init = torch.tensor([math.log(p0), math.log1p(-p0)])
        self.logits = nn.Parameter(init.expand(num_tasks, num_components, 2).clone())  # (T, C, 2)

    @property
    def num_components(self) -> int:
        return self.logits.shape[1]

    def probabilities(self) -> torch.Tensor:
        """``p`` (T, C): the probability that each connection is active."""
        return torch.softmax(self.logits, dim=-1)[..., 0]

    def sample(self, task: int, tau: float, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (C,) of ``task``: exactly 0/1 forward, ∂ of the soft sample backward (§2.2)."""
        return gumbel_sigmoid(self.logits[task], tau, noise=noise, hard=True, form="offset")

    def allocation(self) -> torch.Tensor:
        """The deterministic pattern (T, C): ``1[logit_on ≥ logit_off]`` (§2.5)."""
        return (self.logits[..., 0] >= self.logits[..., 1]).to(self.logits.dtype).detach()


class FixedRouter(nn.Module):
    """A fixed binary matrix (T, C) (``no_sharing``: the identity; ``shared_bottom``: all ones)."""

    learned = False

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern.to(torch.float32).clone())

    @property
    def num_components(self) -> int:
        return self.pattern.shape[1]

    def probabilities(self) -> torch.Tensor:
        return self.pattern

    def sample(self, task: int, tau: float, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.pattern[task]

    def allocation(self) -> torch.Tensor:
        return self.pattern


__all__ = ["ConvComponent", "DenseComponent", "FixedRouter", "GumbelMatrixRouter", "IdentityComponent",
           "PoolComponent", "RoutedLayer", "avg_pool_same", "bernoulli_entropy", "combine", "conv2d_same",
           "max_pool_same", "pad_same", "same_padding"]
