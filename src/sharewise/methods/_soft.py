"""What the soft-sharing methods (``taan``, ``cross_stitch``, ``mmoe``, ``soft_order``) share: a
model that computes every requested task's features as one ``(B, n, D)`` tensor, per-task linear
heads on them, the whole-batch hook for per-task data, and a one-phase training.

Each method builds its own trunk from ``ctx.input_spec`` and its ``method.widths``; the configured
backbone is not used. ``trunk: mlp`` (default): inputs flattened, one layer per width (TAAN
specification §5.4: 1152→H→H→H is ``widths: [H, H, H]``). ``trunk: conv`` (image inputs): one
``kernel_size`` convolution per width (channels, "same" padding), a 2×2 max-pool after each
(``pool``), global average pooling before the heads.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..errors import ConfigError

from ..tasks import Task
from .base import Method, MultiTaskModel, OptimSpec, Phase, Stretch, TaskHeads, positive_widths


class SoftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default_factory=lambda: [64, 64],
                              description="hidden widths (conv: channels) of the trunk (Youtube-8M §5.4: [H, H, H])")
    trunk: Literal["mlp", "conv"] = Field("mlp", description="mlp: flattened inputs; conv: image inputs")
    kernel_size: int = Field(3, ge=1, description="conv: the kernel of every layer (odd: same padding)")
    pool: bool = Field(True, description="conv: a 2×2 max-pool after each layer")
    no_decay: list[str] = Field(default_factory=list, description="parameters stepped without optim.weight_decay "
                                                                  "(§5.5; each method names its own)")

    _positive_widths = field_validator("widths")(positive_widths)


def check_trunk(opts: SoftOptions, input_spec: Any) -> None:
    """``trunk: conv`` needs image inputs ``(C, H, W)``."""
    if opts.trunk == "conv" and (input_spec.kind != "image" or len(input_spec.shape) != 3):
        raise ConfigError(f"method.trunk: conv needs image inputs (C, H, W); the data gives {input_spec.kind} "
                          f"inputs of shape {list(input_spec.shape)} (use trunk: mlp)")


def pool2(h: torch.Tensor) -> torch.Tensor:
    """2×2 max-pool of ``(B, C, H, W)`` or per-task ``(B, n, C, H, W)`` feature maps."""
    if h.ndim == 4:
        return F.max_pool2d(h, 2)
    out = F.max_pool2d(h.flatten(0, 1), 2)
    return out.view(*h.shape[:2], *out.shape[1:])


def stack_task_inputs(batches: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Per-task inputs ``{task: (B_t, ...)}`` as one ``(B, n, ...)`` tensor, ``B = max B_t``, and the
    sizes ``B_t``. A shorter task's rows are repeated cyclically to fill its column (its extra rows
    are real examples, so a layer that mixes tasks mixes real features; their outputs are dropped)."""
    xs = list(batches.values())
    size = max(x.shape[0] for x in xs)
    cols = [x if x.shape[0] == size else x[torch.arange(size, device=x.device) % x.shape[0]] for x in xs]
    return torch.stack(cols, 1), [x.shape[0] for x in xs]


class SoftSharingModel(MultiTaskModel, abc.ABC):
    """``forward(x, tasks)``: shared input (flattened for an MLP trunk) → :meth:`features`
    ``(B, n, D)`` (conv: averaged over space) → heads.
    ``forward_all_tasks({task: x_t})``: the per-task inputs stacked ``(B, n, d)`` (see
    :func:`stack_task_inputs`) → :meth:`stacked_features` → heads, each task's own rows kept."""

    def __init__(self, tasks: Sequence[Task], out_features: int, opts: SoftOptions | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.heads = TaskHeads(out_features, self.tasks)
        self.conv = opts is not None and opts.trunk == "conv"
        self.pools = bool(opts.pool) if opts is not None else False
        self.no_decay = tuple(opts.no_decay) if opts is not None else ()

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        """The parameters ``method.no_decay`` can name, by name (TAAN: ``alpha``, ``beta``; the
        other methods: ``mixing``); none by default."""
        return {}

    def _split_no_decay(self, groups: dict[str, list[nn.Parameter]]) -> dict[str, list[nn.Parameter]]:
        """``groups`` with the parameters named by ``no_decay`` moved from each group ``g`` to a
        group ``g_no_decay`` (same learning rate, no weight decay: :class:`OptimSpec.no_decay`)."""
        if not self.no_decay:
            return groups
        kinds = self.decay_kinds()
        exempt = {id(p) for kind in self.no_decay for p in kinds[kind]}
        out: dict[str, list[nn.Parameter]] = {}
        for name, params in groups.items():
            kept = [p for p in params if id(p) not in exempt]
            freed = [p for p in params if id(p) in exempt]
            if kept:
                out[name] = kept
            if freed:
                out[f"{name}_no_decay"] = freed
        return out

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.conv else x.flatten(1)

    def _after_layer(self, h: torch.Tensor) -> torch.Tensor:
        return pool2(h) if self.conv and self.pools else h

    def _head_features(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, n, D)``: feature maps ``(B, n, C, H, W)`` averaged over space."""
        return h.mean((-2, -1)) if h.ndim == 5 else h

    @abc.abstractmethod
    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Features ``(B, n, D)`` (conv: ``(B, n, C, H, W)``) of the tasks ``ids`` for a shared input
        ``x (B, d_in)`` (conv: ``(B, C, H, W)``)."""

    @abc.abstractmethod
    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Features as :meth:`features` for per-task inputs ``x (B, n, d_in)`` (conv: ``(B, n, C, H, W)``),
        column i task ``ids[i]``'s."""

    def _ids(self, names: Sequence[str]) -> list[int]:
        index = {t: i for i, t in enumerate(self.task_names)}
        return [index[t] for t in names]

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **_: Any) -> dict[str, torch.Tensor]:
        names = list(tasks or self.task_names)
        return self.heads.columns(self._head_features(self.features(self._inputs(x), self._ids(names))), names)

    def forward_all_tasks(self, batches: Mapping[str, torch.Tensor], **_: Any) -> dict[str, torch.Tensor]:
        names = list(batches)
        x, sizes = stack_task_inputs({t: self._inputs(v) for t, v in batches.items()})
        out = self.heads.columns(self._head_features(self.stacked_features(x, self._ids(names))), names)
        return {t: out[t][:n] for t, n in zip(names, sizes)}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [*self.shared_modules(), self.heads[task]]

    @abc.abstractmethod
    def shared_modules(self) -> list[nn.Module]:
        """The trunk's modules (on every task's path; rows of ``TaskRows`` count per task)."""


class SoftMethod(Method):
    """One phase ``train`` over the summed task losses plus :meth:`MultiTaskModel.aux_losses`."""

    uses_backbone = False  # the layers of ``method.widths``

    def optim(self, model: MultiTaskModel) -> OptimSpec:
        groups = list(model.param_groups())
        spec = self.default_optim(groups)
        spec.no_decay = tuple(g for g in groups if g.endswith("_no_decay"))
        return spec

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        t = self.cfg.train
        return [Phase("train", [Stretch("train", "main", objective="task+aux")], {"main": self.optim(model)},
                      cycles=t.epochs, max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience)]
