"""What the soft-sharing methods (``taan``, ``cross_stitch``, ``mmoe``, ``soft_order``) share: a
model that computes every requested task's features as one ``(B, n, D)`` tensor, per-task linear
heads on them, the whole-batch hook for per-task data, and a one-phase training.

Each method builds its own MLP trunk from ``ctx.input_spec`` (inputs are flattened) and its
``method.widths`` (TAAN specification §5.4: 1152→H→H→H is ``widths: [H, H, H]``); the configured
backbone is not used. Conv trunks are not built by these methods (the layers support them).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..tasks import Task
from .base import Method, MultiTaskModel, OptimSpec, Phase, Stretch, TaskHeads


class SoftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default_factory=lambda: [64, 64],
                              description="hidden widths of the trunk (Youtube-8M §5.4: [H, H, H])")

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if not v or any(int(w) < 1 for w in v):
            raise ValueError("needs at least one positive width")
        return v


def stack_task_inputs(batches: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Per-task inputs ``{task: (B_t, ...)}`` as one ``(B, n, ...)`` tensor, ``B = max B_t``, and the
    sizes ``B_t``. A shorter task's rows are repeated cyclically to fill its column (its extra rows
    are real examples, so a layer that mixes tasks mixes real features; their outputs are dropped)."""
    xs = list(batches.values())
    size = max(x.shape[0] for x in xs)
    cols = [x if x.shape[0] == size else x[torch.arange(size, device=x.device) % x.shape[0]] for x in xs]
    return torch.stack(cols, 1), [x.shape[0] for x in xs]


class SoftSharingModel(MultiTaskModel, abc.ABC):
    """``forward(x, tasks)``: flattened shared input → :meth:`features` ``(B, n, D)`` → heads.
    ``forward_all_tasks({task: x_t})``: the per-task inputs stacked ``(B, n, d)`` (see
    :func:`stack_task_inputs`) → :meth:`stacked_features` → heads, each task's own rows kept."""

    def __init__(self, tasks: Sequence[Task], out_features: int) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.heads = TaskHeads(out_features, self.tasks)

    @abc.abstractmethod
    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Features ``(B, n, D)`` of the tasks ``ids`` for a shared input ``x (B, d_in)``."""

    @abc.abstractmethod
    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Features ``(B, n, D)`` for per-task inputs ``x (B, n, d_in)``, column i task ``ids[i]``'s."""

    def _ids(self, names: Sequence[str]) -> list[int]:
        index = {t: i for i, t in enumerate(self.task_names)}
        return [index[t] for t in names]

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **_: Any) -> dict[str, torch.Tensor]:
        names = list(tasks or self.task_names)
        return self.heads.columns(self.features(x.flatten(1), self._ids(names)), names)

    def forward_all_tasks(self, batches: Mapping[str, torch.Tensor], **_: Any) -> dict[str, torch.Tensor]:
        names = list(batches)
        x, sizes = stack_task_inputs({t: v.flatten(1) for t, v in batches.items()})
        out = self.heads.columns(self.stacked_features(x, self._ids(names)), names)
        return {t: out[t][:n] for t, n in zip(names, sizes)}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [*self.shared_modules(), self.heads[task]]

    @abc.abstractmethod
    def shared_modules(self) -> list[nn.Module]:
        """The trunk's modules (on every task's path; rows of ``TaskRows`` count per task)."""


class SoftMethod(Method):
    """One phase ``train`` over the summed task losses plus :meth:`MultiTaskModel.aux_losses`."""

    def optim(self, model: MultiTaskModel) -> OptimSpec:
        return self.default_optim(list(model.param_groups()))

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        t = self.cfg.train
        return [Phase("train", [Stretch("train", "main", objective="task+aux")], {"main": self.optim(model)},
                      cycles=t.epochs, max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience)]
