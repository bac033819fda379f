"""``soft_order``: soft layer ordering (Meyerson & Miikkulainen, ICLR 2018; TAAN specification §4.3).

A shared encoder ``d_in → widths[0]`` (Linear + ReLU), then L = ``len(widths) − 1`` shared layers
of that width (Linear + ReLU) applied at D depths, mixed per task
``h_d = Σ_j softmax(S[t, d, :])_j F_j(h_{d−1})``, then the task's head (Youtube-8M §5.4:
``widths: [H, H, H]``, D = 2). With a shared input the encoder and the first depth run once for
all tasks. On per-task data the whole batch runs in one call (``forward_all_tasks``).
"""

from __future__ import annotations

from collections.abc import Sequence

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

    @model_validator(mode="after")
    def _equal_widths(self) -> SoftOrderOptions:
        if len(self.widths) < 2 or len(set(self.widths)) != 1:
            raise ValueError("widths: an encoder width and at least one shared layer, all of one width "
                             f"(got {self.widths})")
        return self


class SoftOrderModel(SoftSharingModel):
    """``in_features``: the input width (conv trunk: its channels; the encoder pools, the shared
    layers keep the feature map's size)."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: SoftOrderOptions) -> None:
        width = opts.widths[0]
        super().__init__(tasks, width, opts)
        if self.conv:
            k = opts.kernel_size
            self.encoder = nn.Sequential(nn.Conv2d(in_features, width, k, padding=k // 2), nn.ReLU(),
                                         *([nn.MaxPool2d(2)] if opts.pool else []))
            layer = lambda: nn.Sequential(nn.Conv2d(width, width, k, padding=k // 2), nn.ReLU())  # noqa: E731
        else:
            self.encoder = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
            layer = None
        self.soft = SoftOrdering(width, len(tasks), num_layers=len(opts.widths) - 1, depth=opts.depth,
                                 layer=layer, task_names=[t.name for t in tasks])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # per-task feature maps (B, n, C, H, W)
            h = self.encoder(x.flatten(0, 1))
            return h.view(*x.shape[:2], *h.shape[1:])
        return self.encoder(x)

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return self.soft(self._encode(x), ids, per_task=False)

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return self.soft(self._encode(x), ids, per_task=True)

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder, self.soft]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": [*self.encoder.parameters(), *self.soft.shared_layers.parameters()],
                "ordering": [self.soft.order_logits], "heads": list(self.heads.parameters())}


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
