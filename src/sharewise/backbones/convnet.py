"""Plain (non-residual) convolutional networks for small images (28×28 MNIST, 105×105 Omniglot).

stem: conv k×k (stride ``stem_stride``) → norm → ReLU. Each block ``i`` with ``widths[i]``
channels computes

    F(x) = pool(ReLU(norm(conv_k×k(x))))          (the whole block output; no residual)
    S(x) = pool(x), channels zero-padded to widths[i]     (``shortcut: parameter_free``)
    S(x) = pool(norm(conv_1×1(x)))                        (``shortcut: conv``)

where ``pool`` is a 2×2 max-pool (stride 2, floor) when the block pools and the identity
otherwise. S is what a gate passes on when it skips the block: the input brought to F's shape,
without adding anything to F (``apply_block`` mixes ``g_exec · F(x) + g_skip · S(x)``). The
parameter-free S needs non-decreasing widths; ``shortcut: conv`` allows any. With every gate
(1, 0) the network equals the plain one (a test checks it).

Sizes with the defaults (4 blocks of 32, 32, 64, 64 channels, every block pools):
28 → 14 → 7 → 3 → 1 and 105 → 52 → 26 → 13 → 6, then global average pooling (``head: avg``,
``out_features`` = last width) or flattening (``head: flatten``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import ConfigError
from .base import Backbone, make_norm, register_backbone


class ConvNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default_factory=lambda: [32, 32, 64, 64])
    kernel_size: int = Field(3, ge=1)
    pool: bool | list[bool] = True  # 2×2 max-pool at the end of every block, or per block
    stem_width: int | None = Field(None, ge=1)  # default widths[0]
    stem_stride: int = Field(1, ge=1)
    norm: Literal["batch", "group", "layer", "none"] = "batch"
    head: Literal["avg", "flatten"] = "avg"
    dropout: float = Field(0.0, ge=0, lt=1)
    shortcut: Literal["parameter_free", "conv"] = "parameter_free"

    @model_validator(mode="after")
    def _check(self) -> ConvNetOptions:
        if not self.widths or min(self.widths) < 1:
            raise ValueError("widths needs at least one block width >= 1")
        if isinstance(self.pool, list) and len(self.pool) != len(self.widths):
            raise ValueError(f"pool lists {len(self.pool)} value(s) for {len(self.widths)} block(s)")
        return self

    def pools(self) -> list[bool]:
        return list(self.pool) if isinstance(self.pool, list) else [self.pool] * len(self.widths)


class ChannelPad(nn.Module):
    """Zero-pads the channel dimension to ``out_channels`` (no parameters)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra > 0 else x


class ConvBlock(nn.Module):
    """``forward(x) = F(x) = pool(act(norm(conv(x))))``; ``shortcut(x) = S(x)`` of F's shape."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, pool: bool, norm: str, shortcut: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=norm == "none")
        self.norm = make_norm(norm, out_ch, 2)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        if shortcut == "conv" and (in_ch != out_ch):
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), make_norm(norm, out_ch, 2),
                                          nn.MaxPool2d(2) if pool else nn.Identity())
        else:
            if out_ch < in_ch:
                raise ConfigError(f"backbone.widths: a parameter-free shortcut cannot go from {in_ch} to {out_ch} "
                                  "channels; use non-decreasing widths or backbone.shortcut: conv")
            parts = ([nn.MaxPool2d(2)] if pool else []) + ([ChannelPad(out_ch)] if out_ch > in_ch else [])
            self.shortcut = nn.Sequential(*parts) if parts else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class ConvNet(Backbone):
    """stem → plain conv blocks → global average pooling (or flatten) → optional dropout."""

    def __init__(self, in_shape: tuple[int, int, int], opts: ConvNetOptions) -> None:
        super().__init__()
        c, h, w = in_shape
        k, stem_w = opts.kernel_size, opts.stem_width or opts.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(c, stem_w, k, opts.stem_stride, k // 2, bias=opts.norm == "none"),
                                  make_norm(opts.norm, stem_w, 2), nn.ReLU())
        h, w = (h + 2 * (k // 2) - k) // opts.stem_stride + 1, (w + 2 * (k // 2) - k) // opts.stem_stride + 1
        blocks, prev = [], stem_w
        for i, (width, pool) in enumerate(zip(opts.widths, opts.pools())):
            blocks.append(ConvBlock(prev, width, k, pool, opts.norm, opts.shortcut))
            if pool:
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ConfigError(f"backbone.pool: block {i} would pool a {in_shape[1]}x{in_shape[2]} input below 1 "
                                  "pixel; pool in fewer blocks or use larger images")
            prev = width
        self.blocks = nn.ModuleList(blocks)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if opts.head == "avg" else [nn.Flatten()]
        if opts.dropout:
            head.append(nn.Dropout(opts.dropout))
        self.pool = nn.Sequential(*head)
        self.out_features = prev if opts.head == "avg" else prev * h * w


@register_backbone("convnet", ConvNetOptions, "plain conv net (conv-norm-ReLU-pool blocks) for small images",
                   ("image",))
def build_convnet(input_spec, opts: ConvNetOptions) -> ConvNet:
    return ConvNet(tuple(input_spec.shape), opts)
