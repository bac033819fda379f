"""``mmoe``: multi-gate mixture of experts (Ma et al., KDD 2018; TAAN specification §4.2).

E experts, each an MLP ``d_in → widths`` (ReLU), computed once for all tasks; task t reads
``h_t(x) = Σ_e softmax(G_t x)_e · f_e(x)`` with a gate ``G_t ∈ R^{E×d_in}`` on the raw
(flattened) input, then its head. On per-task data the whole batch runs in one call
(``forward_all_tasks``): the experts once on every task's examples together, each task's gate on
its own (the same numbers as one call per task, fewer operations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..layers import MMoE
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, SoftSharingModel, check_trunk
from .base import BuildContext, register_method


class MMoEOptions(SoftOptions):
    num_experts: int = Field(6, ge=1, description="E experts (Youtube-8M §5.4: 6, each an MLP of widths)")
    no_decay: list[Literal["mixing"]] = Field(default_factory=list,
                                              description="mixing: the gates stepped without weight decay (§5.5)")


def _expert(in_features: int, opts: MMoEOptions) -> nn.Sequential:
    """An MLP of ``widths`` (ReLU), or for ``trunk: conv`` a conv net ending in global average pooling."""
    dims = [in_features, *opts.widths]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        if opts.trunk == "conv":
            layers += [nn.Conv2d(a, b, opts.kernel_size, padding=opts.kernel_size // 2), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if opts.pool else []
        else:
            layers += [nn.Linear(a, b), nn.ReLU()]
    if opts.trunk == "conv":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class MMoEModel(SoftSharingModel):
    """``in_features``: the input width (conv trunk: its channels; the gates read the input's
    spatial mean)."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: MMoEOptions) -> None:
        super().__init__(tasks, opts.widths[-1], opts)
        self.mmoe = MMoE(in_features, opts.widths[-1], len(tasks), opts.num_experts,
                         expert=lambda: _expert(in_features, opts), task_names=[t.name for t in tasks])

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return self.mmoe(x, ids)

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        b, n = x.shape[:2]
        flat = x.flatten(0, 1)  # (B·n, d): every task's examples through the experts once
        outs = torch.stack([e(flat) for e in self.mmoe.experts], 1).view(b, n, self.mmoe.num_experts, -1)
        weights = torch.stack([self.mmoe.gate_weights(x[:, i], [t])[:, 0] for i, t in enumerate(ids)], 1)  # (B, n, E)
        return torch.einsum("bne,bned->bnd", weights, outs)

    def forward_all_tasks(self, batches: Mapping[str, torch.Tensor], **_: Any) -> dict[str, torch.Tensor]:
        names = list(batches)
        xs = [self._inputs(batches[t]) for t in names]
        flat = torch.cat(xs)  # no padding needed: the experts see each example once
        outs = torch.stack([e(flat) for e in self.mmoe.experts], 1)  # (N, E, D)
        out, start = {}, 0
        for t, i, x in zip(names, self._ids(names), xs):
            weights = self.mmoe.gate_weights(x, [i])[:, 0]  # (B_t, E)
            h = torch.einsum("be,bed->bd", weights, outs[start:start + len(x)])
            out[t] = self.heads[t](h)
            start += len(x)
        return out

    def shared_modules(self) -> list[nn.Module]:
        return [self.mmoe]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self._split_no_decay({"backbone": list(self.mmoe.experts.parameters()), "gates": [self.mmoe.gates],
                                     "heads": list(self.heads.parameters())})

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"mixing": [self.mmoe.gates]}


@register_method
class MultiGateMoE(SoftMethod):
    name = "mmoe"
    description = "multi-gate mixture of experts: shared expert MLPs, one softmax gate per task on the input"
    Options = MMoEOptions
    conformance_options = {"widths": [16, 16], "num_experts": 2}

    def build(self, ctx: BuildContext) -> MMoEModel:
        check_trunk(self.options, ctx.input_spec)
        spec = ctx.input_spec
        return MMoEModel(spec.in_channels if self.options.trunk == "conv" else spec.in_features, ctx.tasks, self.options)
