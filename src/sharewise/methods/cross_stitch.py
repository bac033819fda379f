"""``cross_stitch``: cross-stitch networks (Misra et al., CVPR 2016; TAAN specification §4.1).

One MLP column per task; after every layer's activation a :class:`~sharewise.layers.CrossStitchUnit`
mixes the task streams, ``h_i = Σ_j A_ij h_j``, with ``A`` initialised near the identity
(``α_S · I + α_D / (T − 1) · (11ᵀ − I)``). Each task's output depends on every column, so a
single-task call computes all T columns (§3). The units' learning rate is ``lr_mult ×
optim.lr`` (the original paper used a larger one). On per-task data the whole batch runs in one
call (``forward_all_tasks``): column i reads task i's examples, paired by position with the other
tasks' (a shorter task's examples repeated), so the streams mixed are real examples of every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..layers import CrossStitchConv2d, CrossStitchLinear
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, SoftSharingModel, check_trunk
from .base import BuildContext, MultiTaskModel, OptimSpec, register_method


class CrossStitchOptions(SoftOptions):
    alpha_self: float = Field(0.9, description="α_S, the initial self weight of every unit (§4.1)")
    alpha_other: float = Field(0.1, description="α_D, the initial weight shared by the other tasks")
    lr_mult: float = Field(1.0, ge=0, description="the units' learning rate as a multiple of optim.lr")
    per_channel: bool = Field(False, description="one T×T mixing matrix per unit of the layer")
    no_decay: list[Literal["mixing"]] = Field(default_factory=list,
                                              description="mixing: the units stepped without weight decay (§5.5)")


class CrossStitchModel(SoftSharingModel):
    """``in_features``: the input width (conv trunk: its channels)."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: CrossStitchOptions) -> None:
        super().__init__(tasks, opts.widths[-1], opts)
        names = [t.name for t in tasks]
        dims = [in_features, *opts.widths]
        common = dict(task_names=names, per_channel_units=opts.per_channel, alpha_self=opts.alpha_self,
                      alpha_other=opts.alpha_other, lr_mult=opts.lr_mult)
        if self.conv:
            k = opts.kernel_size
            layers = [CrossStitchConv2d(a, b, k, len(names), padding=k // 2, **common) for a, b in zip(dims[:-1], dims[1:])]
        else:
            layers = [CrossStitchLinear(a, b, len(names), **common) for a, b in zip(dims[:-1], dims[1:])]
        self.layers = nn.ModuleList(layers)

    def _columns(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = self._after_layer(layer(h))  # (B, T, width[, H, W]): every column, mixed
        return h

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        h = self._columns(x)  # the shared input enters every column
        return h if ids == list(range(len(self.tasks))) else h[:, ids]

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        num_tasks = len(self.tasks)
        if ids != list(range(num_tasks)):  # a task absent from the batch: its column reads the first present task's inputs
            cols = [x[:, ids.index(t)] if t in ids else x[:, 0] for t in range(num_tasks)]
            x = torch.stack(cols, 1)
        h = self._columns(x)
        return h if ids == list(range(num_tasks)) else h[:, ids]

    def shared_modules(self) -> list[nn.Module]:
        return [self.layers]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        units = [layer.unit.mixing for layer in self.layers]
        ids = {id(p) for p in units}
        return self._split_no_decay({"backbone": [p for p in self.layers.parameters() if id(p) not in ids],
                                     "cross_stitch": units, "heads": list(self.heads.parameters())})

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"mixing": [layer.unit.mixing for layer in self.layers]}

    @torch.no_grad()
    def mixing_matrices(self) -> list[list]:
        return [layer.unit.mixing.tolist() for layer in self.layers]


@register_method
class CrossStitch(SoftMethod):
    name = "cross_stitch"
    description = "cross-stitch networks: one column per task, learned linear mixing of the task streams after every layer"
    Options = CrossStitchOptions
    conformance_options = {"widths": [16, 16]}

    def build(self, ctx: BuildContext) -> CrossStitchModel:
        check_trunk(self.options, ctx.input_spec)
        spec = ctx.input_spec
        return CrossStitchModel(spec.in_channels if self.options.trunk == "conv" else spec.in_features, ctx.tasks,
                                self.options)

    def optim(self, model: MultiTaskModel) -> OptimSpec:
        spec = super().optim(model)
        for group in ("cross_stitch", "cross_stitch_no_decay"):
            if group in spec.lrs:
                spec.lrs[group] = spec.lrs[group] * self.options.lr_mult
        return spec

    def results(self, ctx, model) -> dict:
        return {"cross_stitch_units": model.mixing_matrices(), "task_order": model.task_names}
