"""Layers with one weight matrix per task (T separate columns), the base of MRN and DMTRL.

A layer here holds, or computes, per-task weights ``W_t ∈ R^{d_out×d_in}`` (conv: the kernel
flattened, ``d_in = c_in·k·k``) and biases ``b_t``, and applies task t's to task t's input:
``y_t = W_t x + b_t`` (conv: the convolution with kernel t). No activation inside the layer: like
``nn.Linear``, the model puts one between layers. :class:`TaskLinear` / :class:`TaskConv2d` store
the weights densely (T independent networks, the single-task reference); MRN adds a prior on
the stacked weights (:mod:`.mrn`), DMTRL stores them factorised (:mod:`.dmtrl`).

``forward(x, task)``: ``task`` an int or a name → ``(B, d_out[, H, W])``; None (all tasks, or the
index of a ``single_task`` context) or a list of ids → ``(B, n, d_out[, H, W])``. The input is
shared, ``(B, d_in[, H, W])``, or per task, ``(B, n, d_in[, H, W])`` with one column per requested
task. Only the requested tasks' weights are computed.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._task_arg import check_task_names, resolve_task


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def linear_init(num_tasks: int, out_features: int, fan_in: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task weights ``(T, out, fan_in)`` and biases ``(T, out)`` drawn as ``nn.Linear`` /
    ``nn.Conv2d`` draw theirs (Kaiming-uniform with a = √5: U(±1/√fan_in) for both)."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    weight = (torch.rand(num_tasks, out_features, fan_in, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(num_tasks, out_features, generator=generator) * 2 - 1) * bound
    return weight, bias


class TaskWeightLayer(nn.Module, abc.ABC):
    """The forward of every per-task-weight layer; subclasses give the weights of some tasks."""

    feature_dims = 1  # 1: vectors (B, d); 3: feature maps (B, C, H, W)

    def _init_tasks(self, num_tasks: int, task_names: Sequence[str] | None, in_features: int, out_features: int,
                    kernel_size=None, stride=1, padding=0, dilation=1) -> None:
        self.num_tasks = int(num_tasks)
        self.task_names = check_task_names(self.num_tasks, task_names)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in and out features must be >= 1 (got {in_features}, {out_features})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if kernel_size is not None:
            self.feature_dims = 3
            self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
            self.padding, self.dilation = _pair(padding), _pair(dilation)

    @property
    def fan_in(self) -> int:
        """``d_in`` of the weight matrices: the input width, or ``c_in·k·k`` for a convolution."""
        if self.feature_dims == 1:
            return self.in_features
        return self.in_features * self.kernel_size[0] * self.kernel_size[1]

    @abc.abstractmethod
    def task_weights(self, ids: list[int]) -> torch.Tensor:
        """The weight matrices of tasks ``ids``, ``(n, d_out, d_in)``."""

    @abc.abstractmethod
    def task_bias(self, ids: list[int]) -> torch.Tensor | None:
        """The biases of tasks ``ids``, ``(n, d_out)``, or None."""

    def forward(self, x: torch.Tensor, task=None) -> torch.Tensor:
        single, ids = resolve_task(task, self.num_tasks, self.task_names)
        shared = x.ndim == 1 + self.feature_dims
        if not shared and x.ndim != 2 + self.feature_dims:
            raise ValueError(f"{type(self).__name__}: expected a shared input with {1 + self.feature_dims} dimensions "
                             f"or a per-task one with {2 + self.feature_dims}, got {tuple(x.shape)}")
        if not shared and (single is not None or x.shape[1] != len(ids)):
            raise ValueError(f"{type(self).__name__}: a per-task input (B, n, ...) needs task=None or a list of n ids "
                             f"(got {x.shape[1]} columns for tasks {ids})")
        weight, bias = self.task_weights(ids), self.task_bias(ids)
        out = self._linear(x, weight, bias, shared) if self.feature_dims == 1 else self._conv(x, weight, bias, shared)
        return out[:, 0] if single is not None else out

    def _linear(self, x, weight, bias, shared: bool) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected {self.in_features} input features, got {x.shape[-1]}")
        out = torch.einsum("noi,bi->bno", weight, x) if shared else torch.einsum("noi,bni->bno", weight, x)
        return out + bias if bias is not None else out

    def _conv(self, x, weight, bias, shared: bool) -> torch.Tensor:
        n = weight.shape[0]
        channels = x.shape[1] if shared else x.shape[2]
        if channels != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected {self.in_features} input channels, got {channels}")
        kernels = weight.reshape(n * self.out_features, self.in_features, *self.kernel_size)
        flat_bias = bias.reshape(-1) if bias is not None else None
        common = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        b = x.shape[0]
        if shared:
            out = F.conv2d(x, kernels, flat_bias, **common)
        else:  # one grouped convolution: group t reads column t with kernel t
            out = F.conv2d(x.reshape(b, n * self.in_features, *x.shape[3:]), kernels, flat_bias, groups=n, **common)
        return out.view(b, n, self.out_features, *out.shape[2:])

    def regularization(self, c: float) -> torch.Tensor:
        """``c ×`` the layer's penalty; none here (0)."""
        return next(self.parameters()).new_zeros(())


class _DenseTaskWeights(TaskWeightLayer):
    """Dense per-task weights ``weight (T, d_out, d_in)`` and ``bias (T, d_out)``: a row per task."""

    per_task_rows = True

    def _init_dense(self, bias: bool) -> None:
        weight, b = linear_init(self.num_tasks, self.out_features, self.fan_in)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(b) if bias else None

    def task_weights(self, ids: list[int]) -> torch.Tensor:
        return self.weight if ids == list(range(self.num_tasks)) else self.weight[ids]

    def task_bias(self, ids: list[int]) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.bias if ids == list(range(self.num_tasks)) else self.bias[ids]

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, in={self.in_features}, out={self.out_features}"


class TaskLinear(_DenseTaskWeights):
    """``TaskLinear(in_features, out_features, num_tasks)``: T independent ``nn.Linear`` s, each
    initialised like one, stacked: ``weight (T, out, in)``, ``bias (T, out)``."""

    def __init__(self, in_features: int, out_features: int, num_tasks: int, *, bias: bool = True,
                 task_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self._init_tasks(num_tasks, task_names, in_features, out_features)
        self._init_dense(bias)


class TaskConv2d(_DenseTaskWeights):
    """``TaskConv2d(in_channels, out_channels, kernel_size, num_tasks, stride=1, padding=0)``: T
    independent ``nn.Conv2d`` s; ``weight (T, c_out, c_in·k·k)`` (the kernels flattened)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_tasks: int, *, stride=1, padding=0,
                 dilation=1, bias: bool = True, task_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self._init_tasks(num_tasks, task_names, in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_dense(bias)
