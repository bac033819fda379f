"""``independent``: one backbone and head per task, nothing shared (the single-task reference).

Each task's network is selected on that task's own validation primary metric, so a run of
``independent`` serves as the single-task reference B of Δ_MTL (protocol point 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..tasks import Task
from .base import BuildContext, Method, MultiTaskModel, Phase, Stretch, TaskDict, register_method, task_key


class SeparateNetworks(MultiTaskModel):
    def __init__(self, backbones: dict[str, nn.Module], tasks: list[Task]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.backbones = TaskDict(backbones)
        self.heads = TaskDict({t.name: nn.Linear(backbones[t.name].out_features, t.out_features) for t in tasks})

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **_: Any) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](self.backbones[t](x)) for t in (tasks or self.task_names)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbones.parameters()), "heads": list(self.heads.parameters())}

    def task_prefixes(self, task: str) -> list[str]:
        return [f"backbones.{task_key(task)}.", f"heads.{task_key(task)}."]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.backbones[task], self.heads[task]]


@register_method
class Independent(Method):
    name = "independent"
    description = "no sharing: one backbone and head per task, each selected on its own validation metric"

    def build(self, ctx: BuildContext) -> SeparateNetworks:
        return SeparateNetworks({t.name: ctx.backbone_factory() for t in ctx.tasks}, ctx.tasks)

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        t = self.cfg.train
        return [Phase("train", [Stretch("train", "main")], {"main": self.default_optim(["backbone", "heads"])},
                      cycles=t.epochs, max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience,
                      selection="per_task")]
