"""2-D ResNets with basic or bottleneck blocks, sized for small images by default.

Stem: 3×3 conv (``stem: small``, for 8–64 px inputs) or 7×7/2 conv + 3×3/2 max-pool
(``stem: imagenet``). Stages of ``blocks`` residual blocks with ``widths`` channels; the first
block of stages after the first halves the resolution with a projection shortcut (1×1 conv + norm).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .base import Backbone, Block, make_norm, register_backbone


class ResNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64])
    blocks: list[int] = Field(default_factory=lambda: [2, 2, 2])
    block: Literal["basic", "bottleneck"] = "basic"
    stem: Literal["small", "imagenet"] = "small"
    norm: Literal["batch", "group", "layer", "none"] = "batch"

    @model_validator(mode="after")
    def _same_length(self) -> ResNetOptions:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError("widths and blocks need one entry per stage")
        return self


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


class BasicBlock(Block):
    """G(x) = norm(conv3(ReLU(norm(conv3_stride(x))))); F(x) = ReLU(S(x) + G(x)). 2-D or 3-D (``dims``)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, norm: str, dims: int = 2, dilation: int = 1) -> None:
        super().__init__()
        conv = _conv(dims)
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 3, stride, dilation, dilation, bias=False)
        self.bn1 = make_norm(norm, width, dims)
        self.conv2 = conv(width, out_ch, 3, 1, dilation, dilation, bias=False)
        self.bn2 = make_norm(norm, out_ch, dims)
        self.act = nn.ReLU()
        self.shortcut = _projection(in_ch, out_ch, stride, norm, dims)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class BottleneckBlock(Block):
    """G(x) = norm(conv1(ReLU(norm(conv3_stride(ReLU(norm(conv1(x)))))))), 4× expansion; 2-D or 3-D."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, norm: str, dims: int = 2, dilation: int = 1) -> None:
        super().__init__()
        conv = _conv(dims)
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 1, 1, 0, bias=False)
        self.bn1 = make_norm(norm, width, dims)
        self.conv2 = conv(width, width, 3, stride, dilation, dilation, bias=False)
        self.bn2 = make_norm(norm, width, dims)
        self.conv3 = conv(width, out_ch, 1, 1, 0, bias=False)
        self.bn3 = make_norm(norm, out_ch, dims)
        self.act = nn.ReLU()
        self.shortcut = _projection(in_ch, out_ch, stride, norm, dims)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(h))


def _projection(in_ch: int, out_ch: int, stride: int, norm: str, dims: int) -> nn.Module:
    """S(x): identity when the shape is kept, else a 1×1 (1³) conv with the stride + norm."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(_conv(dims)(in_ch, out_ch, 1, stride, 0, bias=False), make_norm(norm, out_ch, dims))


class ResNet(Backbone):
    """A 2-D ResNet with the block interface (3-D networks: ``resnet3d``, same blocks)."""

    def __init__(self, in_channels: int, widths: list[int], blocks: list[int], block: str = "basic",
                 stem: str = "small", norm: str = "batch") -> None:
        super().__init__()
        block_cls = BasicBlock if block == "basic" else BottleneckBlock
        if stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), make_norm(norm, widths[0], 2),
                                      nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), make_norm(norm, widths[0], 2),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, in_ch = [], widths[0]
        for stage, (w, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(block_cls(in_ch, w, stride, norm))
                in_ch = w * block_cls.expansion
        self.blocks = nn.ModuleList(layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = in_ch


@register_backbone("resnet2d", ResNetOptions, "2-D ResNet (basic/bottleneck blocks) for images", ("image",))
def build_resnet2d(input_spec, opts: ResNetOptions) -> ResNet:
    return ResNet(input_spec.in_channels, opts.widths, opts.blocks, opts.block, opts.stem, opts.norm)
