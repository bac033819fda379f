"""Plain MLP: ``Linear → ReLU`` layers, no normalisation, no residual (spec §5.4's Hard3 and
single-task networks: 1152→H→H→H with ``widths: [H, H, H]``).

The stem is the first layer ``in → widths[0]``; each further width is one block
``F(x) = ReLU(W x + b)``. A block's shortcut ``S(x)`` is parameter-free (``x`` zero-padded or
cut to the block's width), so skipping a block adds no parameter and a block keeps the
backbone contract (``block(x)`` is the whole output, nothing added to it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from .base import Backbone, register_backbone


class PlainMLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default_factory=lambda: [128, 128, 128])  # one Linear + ReLU each
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("widths needs at least one layer width >= 1")
        return v


class FeaturePad(nn.Module):
    """``x`` brought to ``out_features`` by zero-padding or cutting the last dimension (no parameters)."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_features - x.shape[-1]
        return F.pad(x, (0, extra)) if extra > 0 else x[..., : self.out_features]


class PlainBlock(nn.Module):
    """``F(x) = dropout(ReLU(W x + b))``; ``shortcut`` = :class:`FeaturePad` (identity at equal widths)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = nn.Identity() if in_features == out_features else FeaturePad(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.linear(x)))


class PlainMLP(Backbone):
    def __init__(self, in_features: int, widths: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, widths[0]), nn.ReLU(),
                                  *([nn.Dropout(dropout)] if dropout else []))
        self.blocks = nn.ModuleList(PlainBlock(a, b, dropout) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = nn.Identity()
        self.out_features = widths[-1]


@register_backbone("plain_mlp", PlainMLPOptions,
                   "plain MLP (Linear + ReLU layers of `widths`, no normalisation, no residual) for vector inputs",
                   ("vector", "image", "volume"))
def build_plain_mlp(input_spec, opts: PlainMLPOptions) -> PlainMLP:
    return PlainMLP(input_spec.in_features, list(opts.widths), opts.dropout)
