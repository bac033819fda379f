"""``soft_order``: soft layer ordering (Meyerson & Miikkulainen, ICLR 2018; TAAN specification §4.3).

An encoder ``d_in → widths[0]`` (Linear + ReLU), then L = ``len(widths) − 1`` shared layers of that
width (Linear + ReLU) applied at D depths, mixed per task
``h_d = Σ_j softmax(S[t, d, :])_j F_j(h_{d−1})``, then the task's head (Youtube-8M §5.4:
``widths: [H, H, H]``, D = 2). ``encoder: shared`` (default, ours for same-input data): one encoder,
and with a shared input the encoder and the first depth run once for all tasks.
``encoder: task_specific`` (the original method: task-specific encoders and decoders around the
softly ordered shared core): one encoder per task, so only the core is shared. On per-task data
the whole batch runs in one call (``forward_all_tasks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..layers import SoftOrdering
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, SoftSharingModel, check_trunk
from .base import BuildContext, register_method


class SoftOrderOptions(SoftOptions):
    widths: list[int] = Field(default_factory=lambda: [64, 64, 64],
                              description="encoder width, then one equal width per shared soft-ordered layer")
    depth: int | None = Field(None, ge=1, description="D depths (default: the number of shared layers)")
    encoder: Literal["shared", "task_specific"] = Field(
        "shared", description="shared: one encoder for all tasks; task_specific: one per task (the original method)")
    no_decay: list[Literal["mixing"]] = Field(
        default_factory=list, description="mixing: the ordering logits stepped without weight decay (§5.5)")

    @model_validator(mode="after")
    def _equal_widths(self) -> SoftOrderOptions:
        if len(self.widths) < 2 or len(set(self.widths)) != 1:
            raise ValueError("widths: an encoder width and at least one shared layer, all of one width "
                             f"(got {self.widths})")
        return self


class SoftOrderModel(SoftSharingModel):
    """``in_features``: the input width (conv trunk: its channels; the encoder pools, the shared
    layers keep the feature map's size). The encoder is ``encoder`` (shared) or ``encoders[t]``
    (``encoder: task_specific``)."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: SoftOrderOptions) -> None:
        width = opts.widths[0]
        super().__init__(tasks, width, opts)
        if self.conv:
            k = opts.kernel_size

            def make_encoder() -> nn.Module:
                return nn.Sequential(nn.Conv2d(in_features, width, k, padding=k // 2), nn.ReLU(),
                                     *([nn.MaxPool2d(2)] if opts.pool else []))

            layer = lambda: nn.Sequential(nn.Conv2d(width, width, k, padding=k // 2), nn.ReLU())  # noqa: E731
        else:
            def make_encoder() -> nn.Module:
                return nn.Sequential(nn.Linear(in_features, width), nn.ReLU())

            layer = None
        self.task_encoders = opts.encoder == "task_specific"
        if self.task_encoders:
            self.encoders = nn.ModuleList([make_encoder() for _ in tasks])
        else:
            self.encoder = make_encoder()
        self.soft = SoftOrdering(width, len(tasks), num_layers=len(opts.widths) - 1, depth=opts.depth,
                                 layer=layer, task_names=[t.name for t in tasks])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # per-task feature maps (B, n, C, H, W)
            h = self.encoder(x.flatten(0, 1))
            return h.view(*x.shape[:2], *h.shape[1:])
        return self.encoder(x)

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        if self.task_encoders:  # each task's encoder on the shared input: per-task streams from here on
            return self.soft(torch.stack([self.encoders[t](x) for t in ids], 1), ids, per_task=True)
        return self.soft(self._encode(x), ids, per_task=False)

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        if self.task_encoders:
            return self.soft(torch.stack([self.encoders[t](x[:, i]) for i, t in enumerate(ids)], 1), ids, per_task=True)
        return self.soft(self._encode(x), ids, per_task=True)

    def shared_modules(self) -> list[nn.Module]:
        return [self.soft] if self.task_encoders else [self.encoder, self.soft]

    def task_modules(self, task: str) -> list[nn.Module]:
        if self.task_encoders:
            return [self.encoders[self.task_names.index(task)], self.soft, self.heads[task]]
        return super().task_modules(task)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        encoders = self.encoders if self.task_encoders else self.encoder
        return self._split_no_decay({"backbone": [*encoders.parameters(), *self.soft.shared_layers.parameters()],
                                     "ordering": [self.soft.order_logits], "heads": list(self.heads.parameters())})

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"mixing": [self.soft.order_logits]}


@register_method
class SoftOrder(SoftMethod):
    name = "soft_order"
    description = "soft layer ordering: shared layers applied at every depth, mixed by per-task softmax weights"
    Options = SoftOrderOptions
    conformance_options = {"widths": [16, 16, 16]}

    def build(self, ctx: BuildContext) -> SoftOrderModel:
        check_trunk(self.options, ctx.input_spec)
        spec = ctx.input_spec
        return SoftOrderModel(spec.in_channels if self.options.trunk == "conv" else spec.in_features, ctx.tasks,
                              self.options)

    def results(self, ctx, model) -> dict:
        return {"ordering_weights": torch.softmax(model.soft.order_logits.detach(), -1).tolist(),
                "task_order": model.task_names}
