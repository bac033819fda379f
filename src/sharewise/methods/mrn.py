"""``mrn``: multilinear relationship network (Long et al., NIPS 2017; TAAN specification §4.4).

T networks (one column per task, :class:`~sharewise.layers.MRNLinear` layers with a ReLU after
each) whose stacked weights carry a tensor-normal prior: the loss adds ``c · Σ_layers R(𝒲)``
(:meth:`MRNModel.aux_losses`) once per step, and the precisions are re-estimated every
``update_interval`` optimiser steps by the phase's after-step hook (the TAAN reference never
updated them, leaving T independent MLPs plus ``c · ‖𝒲‖²_F``). ``shared_layers: k`` makes the
first k layers shared plain layers (the original MRN shares the lower layers and puts the prior
on the task-specific upper ones; the reference's Youtube-8M baseline, k = 0, has the prior on all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..layers import MRNConv2d, MRNLinear
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, check_trunk
from ._task_columns import TaskColumnsModel, layer_dims, make_columns, make_shared
from .base import BuildContext, Phase, PhaseState, register_method


class MRNOptions(SoftOptions):
    c: float = Field(1e-3, ge=0, description="coefficient of the tensor-normal prior (reference --mrn_constant)")
    update_interval: int = Field(50, ge=1, description="optimiser steps between precision updates (official code: 100)")
    update_task: bool = Field(True, description="re-estimate the task precision Ω_T")
    update_output: bool = Field(False, description="re-estimate the output precision Ω_out")
    update_input: bool = Field(False, description="re-estimate the input precision Ω_in (additively, official rule)")
    update_order: Literal["sequential", "simultaneous"] = Field(
        "sequential", description="sequential: task → output → input, each from the latest others")
    mrn_update: Literal["official", "mle"] = Field("official", description="the precision update rule (§4.4)")
    shared_layers: int = Field(0, ge=0, description="the first k layers shared (no prior); default 0 as the reference")
    no_decay: list[Literal["task_weights"]] = Field(
        default_factory=list, description="task_weights: the prior-carrying weights stepped without weight decay")

    @model_validator(mode="after")
    def _shared_fits(self) -> "MRNOptions":
        if self.shared_layers >= len(self.widths):
            raise ValueError(f"shared_layers ({self.shared_layers}) must leave at least one of the "
                             f"{len(self.widths)} layers (widths) task-specific")
        return self


class MRNModel(TaskColumnsModel):
    """``in_features``: the input width (conv trunk: its channels)."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: MRNOptions) -> None:
        names = [t.name for t in tasks]
        dims = layer_dims(in_features, opts.widths)
        k = opts.shared_layers
        prior = dict(update_task=opts.update_task, update_output=opts.update_output, update_input=opts.update_input,
                     update_order=opts.update_order, rule=opts.mrn_update)
        super().__init__(tasks, opts, make_shared(opts, dims[:k]),
                         make_columns(opts, dims[k:], names, MRNLinear, MRNConv2d, **prior))
        self.c = float(opts.c)

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"task_weights": [layer.weight for layer in self.columns]}

    def aux_losses(self, **_: Any) -> dict[str, torch.Tensor]:
        if self.c == 0:
            return {}
        return {"mrn_prior": self.regularization(self.c)}

    @torch.no_grad()
    def update_precisions(self) -> None:
        for layer in self.columns:
            layer.update_precisions()

    @torch.no_grad()
    def relationships(self) -> list[dict[str, Any]]:
        """Per MRN layer: Ω_T and the task correlation it implies (``Σ_T = Ω_T⁻¹`` normalised to
        unit diagonal), and the penalty ``R(𝒲)``."""
        out = []
        for layer in self.columns:
            omega = layer.omega_task.to(torch.float64)
            cov = torch.linalg.inv(omega)
            sd = torch.sqrt(torch.diagonal(cov).clamp_min(1e-300))
            out.append({"omega_task": omega.tolist(), "task_correlation": (cov / sd[:, None] / sd[None, :]).tolist(),
                        "penalty": float(layer.penalty())})
        return out


@register_method
class MRN(SoftMethod):
    name = "mrn"
    description = ("multilinear relationship network: one column per task with a tensor-normal prior over the "
                   "stacked weights, its task precision re-estimated during training")
    Options = MRNOptions
    conformance_options = {"widths": [16, 16], "update_interval": 2}

    def build(self, ctx: BuildContext) -> MRNModel:
        check_trunk(self.options, ctx.input_spec)
        spec = ctx.input_spec
        return MRNModel(spec.in_channels if self.options.trunk == "conv" else spec.in_features, ctx.tasks, self.options)

    def phases(self, model: MRNModel, steps_per_epoch: int) -> list[Phase]:
        phases = super().phases(model, steps_per_epoch)
        interval = self.options.update_interval

        def after_step(state: PhaseState, split: str) -> None:
            if state.step % interval == 0:
                model.update_precisions()

        phases[0].after_step = after_step
        return phases

    def results(self, ctx, model) -> dict[str, Any]:
        return {"mrn_layers": model.relationships(), "task_order": model.task_names}
