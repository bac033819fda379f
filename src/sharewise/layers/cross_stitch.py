"""Cross-stitch units (Misra et al., CVPR 2016; spec §4.1): learned linear mixing of T task streams.

``CrossStitchUnit`` mixes stacked streams ``h (B, T, ...)`` as ``h_i = Σ_j A_ij h_j``; the
convenience layers put one column (Linear or Conv2d) per task, an activation, then a unit. A
single-task call still computes every column (each task's output depends on all streams) and
returns that task's one.
"""

from __future__ import annotations

import abc

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._task_arg import check_task_names, resolve_task


def near_identity(num_tasks: int, alpha_self: float = 0.9, alpha_other: float = 0.1) -> torch.Tensor:
    """``A = α_S · I + (α_D / (T − 1)) · (11ᵀ − I)`` (rows sum to α_S + α_D; T = 1 gives [α_S + α_D])."""
    eye = torch.eye(num_tasks)
    if num_tasks == 1:
        return (alpha_self + alpha_other) * eye
    return alpha_self * eye + (alpha_other / (num_tasks - 1)) * (1 - eye)


class CrossStitchUnit(nn.Module):
    """Mixing matrix ``A ∈ R^{T×T}`` (or per channel, ``A ∈ R^{C×T×T}``) applied to stacked task
    streams: ``forward(h)`` with ``h (B, T, ...)`` (per channel: ``(B, T, C, ...)``) returns
    ``h'_i = Σ_j A_ij h_j``, same shape. Initialised near the identity (:func:`near_identity`),
    no normalisation in ``forward``. ``lr_mult`` is the factor a method applies to the units'
    learning rate (the original paper used a larger one). ``regularization(c)`` is 0."""

    def __init__(self, num_tasks: int, num_channels: int | None = None, *, alpha_self: float = 0.9,
                 alpha_other: float = 0.1, lr_mult: float = 1.0) -> None:
        super().__init__()
        check_task_names(num_tasks, None)
        self.num_tasks, self.num_channels, self.lr_mult = int(num_tasks), num_channels, float(lr_mult)
        init = near_identity(self.num_tasks, alpha_self, alpha_other)
        if num_channels is not None:
            init = init.expand(int(num_channels), -1, -1).clone()
        self.mixing = nn.Parameter(init)  # (T, T) or (C, T, T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim < 2 or h.shape[1] != self.num_tasks:
            raise ValueError(f"CrossStitchUnit: expected stacked streams (B, {self.num_tasks}, ...), got {tuple(h.shape)}")
        if self.num_channels is None:
            return torch.einsum("ij,bj...->bi...", self.mixing, h)
        if h.ndim < 3 or h.shape[2] != self.num_channels:
            raise ValueError(f"CrossStitchUnit: per-channel mixing needs (B, T, {self.num_channels}, ...), "
                             f"got {tuple(h.shape)}")
        return torch.einsum("cij,bjc...->bic...", self.mixing, h)

    def regularization(self, c: float) -> torch.Tensor:
        return self.mixing.new_zeros(())


class _CrossStitchLayer(nn.Module, abc.ABC):
    def _finish(self, num_tasks, task_names, activation, per_channel_units, channels, alpha_self, alpha_other,
                lr_mult):
        self.num_tasks = int(num_tasks)
        self.task_names = check_task_names(self.num_tasks, task_names)
        self.activation = activation() if activation is not None else nn.Identity()
        self.unit = CrossStitchUnit(self.num_tasks, channels if per_channel_units else None,
                                    alpha_self=alpha_self, alpha_other=alpha_other, lr_mult=lr_mult)

    @abc.abstractmethod
    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """Every task's column of the layer on its input, stacked ``(B, T, ...)``."""

    def forward(self, x: torch.Tensor, task=None) -> torch.Tensor:
        """``x``: shared ``(B, ...)`` or per-task streams ``(B, T, ...)``; ``task`` an int or name →
        that task's stream ``(B, ...)``; None (or a ``single_task`` context) / a list of ids →
        ``(B, n, ...)``. Every column is computed in either case (cost: T columns per call)."""
        single, ids = resolve_task(task, self.num_tasks, self.task_names)
        mixed = self.unit(self.activation(self._columns(x)))
        if single is not None:
            return mixed[:, single]
        return mixed if ids == list(range(self.num_tasks)) else mixed[:, ids]

    def regularization(self, c: float) -> torch.Tensor:
        return self.unit.regularization(c)


class CrossStitchLinear(_CrossStitchLayer):
    """One Linear column per task (weights ``(T, out, in)``, each initialised like ``nn.Linear``),
    an activation (default ReLU), then a :class:`CrossStitchUnit`."""

    def __init__(self, in_features: int, out_features: int, num_tasks: int, *,
                 task_names: Sequence[str] | None = None, bias: bool = True,
                 activation: Callable[[], nn.Module] | None = nn.ReLU, per_channel_units: bool = False,
                 alpha_self: float = 0.9, alpha_other: float = 0.1, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_tasks, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_tasks, out_features)) if bias else None
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        for t in range(num_tasks):
            nn.init.kaiming_uniform_(self.weight[t], a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self._finish(num_tasks, task_names, activation, per_channel_units, out_features, alpha_self, alpha_other,
                     lr_mult)

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            out = torch.einsum("toi,bi->bto", self.weight, x)
        elif x.ndim == 3 and x.shape[1] == self.num_tasks:
            out = torch.einsum("toi,bti->bto", self.weight, x)
        else:
            raise ValueError(f"CrossStitchLinear: expected (B, {self.in_features}) or (B, {self.num_tasks}, "
                             f"{self.in_features}), got {tuple(x.shape)}")
        return out + self.bias if self.bias is not None else out


class CrossStitchConv2d(_CrossStitchLayer):
    """One Conv2d column per task (one grouped convolution over the stacked streams), an
    activation (default ReLU), then a :class:`CrossStitchUnit` (``per_channel_units``: one T×T
    matrix per output channel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_tasks: int, *, stride=1, padding=0,
                 dilation=1, bias: bool = True, task_names: Sequence[str] | None = None,
                 activation: Callable[[], nn.Module] | None = nn.ReLU, per_channel_units: bool = False,
                 alpha_self: float = 0.9, alpha_other: float = 0.1, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = nn.Conv2d(in_channels * num_tasks, out_channels * num_tasks, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=bias, groups=num_tasks)
        self._finish(num_tasks, task_names, activation, per_channel_units, out_channels, alpha_self, alpha_other,
                     lr_mult)

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(1).expand(-1, self.num_tasks, -1, -1, -1)
        if x.ndim != 5 or x.shape[1] != self.num_tasks:
            raise ValueError(f"CrossStitchConv2d: expected (B, C, H, W) or (B, {self.num_tasks}, C, H, W), "
                             f"got {tuple(x.shape)}")
        b = x.shape[0]
        out = self.conv(x.reshape(b, -1, *x.shape[3:]))
        return out.view(b, self.num_tasks, self.out_channels, *out.shape[2:])
