"""3-D ResNets for volumes (brain MRI), with the block interface of every sharewise backbone.

Stages of residual blocks (basic: 3³ + 3³; bottleneck: 1³ + 3³ + 1³ with 4× expansion) whose
widths double per stage from ``width``. Each block computes ``F(x) = ReLU(S(x) + G(x))``, the
residual added exactly once inside the block, and exposes ``S(x)`` as ``block.shortcut``
(identity, or 1³ conv + norm where the shape changes), so a gate mixes ``F`` and ``S`` without
adding the shortcut twice (adashare.md §12.6, fork bug 3).

Layouts (adashare.md §12.5):

- ``strided`` (default): stage strides [1, 2, 2, 2], no dilation, global average pooling; a 96³
  input with the ``imagenet`` stem ends as 3³ × (8·width·expansion).
- ``deeplab``: stage strides [1, 2, 1, 1] with dilations [1, 1, 2, 4] (output stride 8), the
  layout of the AdaShare neuroimaging fork: a 96³ input ends as 12³ × 2048 for ``depth: 50``.

``depth`` picks the usual block counts (10: [1,1,1,1] basic, 18: [2,2,2,2] basic, 34: [3,4,6,3]
basic, 50: [3,4,6,3] bottleneck, 101: [3,4,23,3] bottleneck); ``blocks`` and ``block`` override.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .base import Backbone, make_norm, register_backbone
from .resnet import BasicBlock, BottleneckBlock

DEPTHS: dict[int, tuple[list[int], str]] = {
    10: ([1, 1, 1, 1], "basic"),
    18: ([2, 2, 2, 2], "basic"),
    34: ([3, 4, 6, 3], "basic"),
    50: ([3, 4, 6, 3], "bottleneck"),
    101: ([3, 4, 23, 3], "bottleneck"),
}
LAYOUTS: dict[str, tuple[list[int], list[int]]] = {
    "strided": ([1, 2, 2, 2], [1, 1, 1, 1]),
    "deeplab": ([1, 2, 1, 1], [1, 1, 2, 4]),
}


class ResNet3dOptions(BaseModel):
    """``backbone.*`` keys of ``resnet3d``."""

    model_config = ConfigDict(extra="forbid")
    depth: Literal[10, 18, 34, 50, 101] = 18
    blocks: list[int] | None = None  # blocks per stage (overrides depth)
    block: Literal["basic", "bottleneck"] | None = None  # default: from depth
    width: int = Field(64, ge=1)  # channels of the stem and the first stage; doubled per stage
    widths: list[int] | None = None  # explicit per-stage widths (overrides width)
    layout: Literal["strided", "deeplab"] = "strided"
    strides: list[int] | None = None  # explicit per-stage strides (overrides layout)
    dilations: list[int] | None = None  # explicit per-stage dilations (overrides layout)
    stem: Literal["imagenet", "small"] = "imagenet"  # 7³/2 conv + 3³/2 max-pool, or one 3³ conv
    norm: Literal["batch", "group", "layer", "none"] = "batch"

    @model_validator(mode="after")
    def _check(self) -> ResNet3dOptions:
        n = len(self.stage_blocks())
        if n < 1 or min(self.stage_blocks()) < 1:
            raise ValueError("blocks needs at least one stage, each with at least one block")
        for key in ("widths", "strides", "dilations"):
            v = getattr(self, key)
            if v is not None and (len(v) != n or min(v) < 1):
                raise ValueError(f"{key} needs one positive value per stage ({n} stages)")
        if n > 4 and (self.strides is None or self.dilations is None):
            raise ValueError(f"layout {self.layout!r} covers 4 stages; give strides and dilations for {n} stages")
        return self

    def stage_blocks(self) -> list[int]:
        return list(self.blocks) if self.blocks is not None else DEPTHS[self.depth][0]

    def block_kind(self) -> str:
        return self.block or DEPTHS[self.depth][1]

    def stage_widths(self) -> list[int]:
        n = len(self.stage_blocks())
        return list(self.widths) if self.widths is not None else [self.width * 2 ** i for i in range(n)]

    def stage_geometry(self) -> tuple[list[int], list[int]]:
        n = len(self.stage_blocks())
        strides, dilations = LAYOUTS[self.layout]
        return (list(self.strides) if self.strides is not None else strides[:n],
                list(self.dilations) if self.dilations is not None else dilations[:n])


class ResNet3d(Backbone):
    """stem → residual blocks (stage by stage, flattened into ``blocks``) → global average pooling."""

    def __init__(self, in_channels: int, opts: ResNet3dOptions) -> None:
        super().__init__()
        widths, counts = opts.stage_widths(), opts.stage_blocks()
        strides, dilations = opts.stage_geometry()
        block_cls = BasicBlock if opts.block_kind() == "basic" else BottleneckBlock
        stem_w = widths[0]
        if opts.stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv3d(in_channels, stem_w, 7, 2, 3, bias=False), make_norm(opts.norm, stem_w, 3),
                                      nn.ReLU(), nn.MaxPool3d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv3d(in_channels, stem_w, 3, 1, 1, bias=False), make_norm(opts.norm, stem_w, 3),
                                      nn.ReLU())
        layers: list[nn.Module] = []
        in_ch = stem_w
        for width, n, stride, dilation in zip(widths, counts, strides, dilations):
            for i in range(n):
                layers.append(block_cls(in_ch, width, stride if i == 0 else 1, opts.norm, dims=3, dilation=dilation))
                in_ch = width * block_cls.expansion
        self.blocks = nn.ModuleList(layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.out_features = in_ch


@register_backbone("resnet3d", ResNet3dOptions,
                   "3-D ResNet (basic/bottleneck blocks; strided or DeepLab layout) for volumes", ("volume",))
def build_resnet3d(input_spec, opts: ResNet3dOptions) -> ResNet3d:
    return ResNet3d(input_spec.in_channels, opts)
