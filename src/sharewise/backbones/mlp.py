"""Residual MLP: a linear stem and N residual blocks ``F(x) = act(S(x) + W2 σ(W1 x))``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .base import Backbone, Block, make_norm, register_backbone


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(128, ge=1)
    depth: int = Field(4, ge=1, description="number of residual blocks")
    widths: list[int] | None = None  # per block; overrides width/depth
    norm: Literal["batch", "layer", "group", "none"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)


class ResidualMLPBlock(Block):
    def __init__(self, in_features: int, out_features: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, out_features)
        self.norm1 = make_norm(norm, out_features, 0)
        self.fc2 = nn.Linear(out_features, out_features)
        self.norm2 = make_norm(norm, out_features, 0)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.act = nn.ReLU()
        self.shortcut = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features, bias=False)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.norm2(self.fc2(h))


class ResidualMLP(Backbone):
    def __init__(self, in_features: int, widths: list[int], norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, widths[0]), make_norm(norm, widths[0], 0), nn.ReLU())
        blocks, prev = [], widths[0]
        for w in widths:
            blocks.append(ResidualMLPBlock(prev, w, norm, dropout))
            prev = w
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Identity()
        self.out_features = prev


@register_backbone("mlp", MLPOptions, "residual MLP (stem + N residual blocks) for vector inputs",
                   ("vector", "image", "volume"))
def build_mlp(input_spec, opts: MLPOptions) -> ResidualMLP:
    widths = opts.widths or [opts.width] * opts.depth
    return ResidualMLP(input_spec.in_features, widths, opts.norm, opts.dropout)
