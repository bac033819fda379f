"""Replacing modules of a network per task (a shared layer becomes one with per-task parameters)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace, depth first, every descendant ``child`` of ``module`` for which ``make(child)``
    returns a module (None: keep it and look inside it); returns how many were replaced.

    E.g. ``replace_modules(backbone.blocks, lambda m: PerTaskBatchNorm.from_shared(m, T, 2) if
    isinstance(m, nn.BatchNorm2d) else None)``. A replaced module's own children are not visited.
    """
    count = 0
    for name, child in list(module.named_children()):
        new = make(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += replace_modules(child, make)
    return count


class TaskRows(nn.Module):
    """One parameter with a row per task (``value[t]`` is task t's), e.g. TAL's slopes α or a gate.

    ``per_task_rows = True`` tells the parameter counts (``sharewise.cost``) that only task t's row
    is on task t's path."""

    per_task_rows = True

    def __init__(self, value) -> None:
        super().__init__()
        self.value = nn.Parameter(value)

    def forward(self):  # pragma: no cover - a holder, not a computation
        return self.value

    def extra_repr(self) -> str:
        return f"rows={self.value.shape[0]}, shape={tuple(self.value.shape[1:])}"
