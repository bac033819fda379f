"""``hard``: hard parameter sharing, one shared backbone and one linear head per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..tasks import Task
from .base import BuildContext, Method, MultiTaskModel, Phase, Stretch, TaskHeads, register_method


class SharedBottom(MultiTaskModel):
    def __init__(self, backbone: nn.Module, tasks: list[Task]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.backbone = backbone
        self.heads = TaskHeads(backbone.out_features, tasks)

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **_: Any) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {t: self.heads[t](features) for t in (tasks or self.task_names)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "heads": list(self.heads.parameters())}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.backbone, self.heads[task]]


@register_method
class Hard(Method):
    name = "hard"
    description = "hard parameter sharing: one shared backbone, one head per task (summed task losses)"

    def build(self, ctx: BuildContext) -> SharedBottom:
        return SharedBottom(ctx.backbone_factory(), ctx.tasks)

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        t = self.cfg.train
        return [Phase("train", [Stretch("train", "main")], {"main": self.default_optim(["backbone", "heads"])},
                      cycles=t.epochs, max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience)]
